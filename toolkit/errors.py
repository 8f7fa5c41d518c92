"""The one exception type the CLI turns into a one-line message and a non-zero exit, and the
guard that keeps a Ctrl-C a Ctrl-C inside foreign code."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class ToolkitError(Exception):
    """A user-facing problem (bad input, bad checkpoint, ...): the message is the whole story."""


@contextmanager
def keep_interrupts():
    """Raise KeyboardInterrupt at the end of the block if Ctrl-C was pressed inside it.

    Exporters run a lot of foreign code that can turn the KeyboardInterrupt into an ordinary error
    (a Ctrl-C in the middle of one of torch.onnx's lazy imports leaves a half-initialised module whose
    next use fails with AttributeError, which torch.onnx reports as TorchExportError) or swallow it.
    Every SIGINT is noted here, so the caller sees the interrupt whatever the code in between made of it.
    """
    seen = []
    previous = signal.getsignal(signal.SIGINT)
    # Only Python's own handlers can be chained (SIG_IGN: a background job that ignores Ctrl-C).
    install = callable(previous) and threading.current_thread() is threading.main_thread()

    def note(signum, frame):
        seen.append(signum)
        previous(signum, frame)

    if install:
        signal.signal(signal.SIGINT, note)
    try:
        yield
    except Exception as err:
        if seen:
            raise KeyboardInterrupt from err
        raise
    finally:
        if install:
            signal.signal(signal.SIGINT, previous)
    if seen:
        raise KeyboardInterrupt
