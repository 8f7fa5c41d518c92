"""What every quantization stage returns, and the error a stage raises when it cannot produce a
precision for a graph (the ladder records the message as the reason to step down)."""
from __future__ import annotations

import faulthandler
import multiprocessing
import os
import resource
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ToolkitError


class QuantizeError(ToolkitError):
    """A stage cannot make this precision of this graph (one line: why)."""


@dataclass
class StageResult:
    path: Path                 # the artifact written
    format: str                # onnx | tensorrt | coreml | ptl
    precision: str             # see gate.PRECISIONS
    method: str                # what was done, in words ("static QDQ, per-channel weights, MinMax")
    settings: dict = field(default_factory=dict)      # the library settings used
    kept_float: list[str] = field(default_factory=list)  # operator types (or modules) left in float
    operators: dict[str, int] = field(default_factory=dict)  # operator / op type counts of the artifact
    seconds: float = 0.0
    size_bytes: int = 0
    source_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    # Where the artifact cannot run here (Core ML on Linux): a PyTorch module computing what it
    # computes, with the component's inputs and outputs, for the accuracy gate. Not serialised.
    simulation: object = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"file": self.path.name, "format": self.format, "precision": self.precision, "method": self.method,
                "settings": self.settings, "kept_float": self.kept_float, "operators": self.operators,
                "seconds": round(self.seconds, 3), "size_bytes": self.size_bytes, "source_bytes": self.source_bytes,
                "notes": self.notes}


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# The share of the memory available at fork time a quantizer child may add to its address space.
# Beyond it an allocation fails inside the child (MemoryError, or onnxruntime's allocation error)
# instead of waking the kernel's OOM killer, which may pick any process on the machine: the full-size
# fusion encoder's static calibration asked onnxruntime for every intermediate tensor of a sample at
# once (its 5,184 x 5,184 attention maps) and drove the build to 23.8 GiB peak on a 24 GiB machine.
MEMORY_SHARE = 0.8


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None  # not Linux: no ceiling


def _cap_address_space(available: int | None) -> None:
    """RLIMIT_AS = what this (forked) process maps now + MEMORY_SHARE of `available`."""
    if available is None:
        return
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = mapped + int(MEMORY_SHARE * available)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling if hard == resource.RLIM_INFINITY else min(ceiling, hard), hard))


def isolated(fn: Callable, *args, **kwargs):
    """`fn(*args, **kwargs)` in a forked child process, so that a crash of native code (onnxruntime's
    calibration sessions have died with SIGSEGV on full-size graphs) becomes a QuantizeError - the
    ladder steps down with the reason - instead of killing the build. Fork, not spawn: the child
    inherits the feed readers (closures over files on disk) and needs no re-import; it runs numpy and
    onnxruntime only. The result and any exception travel back pickled; an exception comes back as a
    QuantizeError with its message. The child's address space is capped (`MEMORY_SHARE`)."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    available = _available_bytes()

    def child():
        receive.close()
        faulthandler.disable()  # a crash is the parent's one-line reason; an inherited dump would interleave
        try:
            _cap_address_space(available)
            send.send(("ok", fn(*args, **kwargs)))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent as one line
            if isinstance(err, MemoryError):
                err = QuantizeError(f"out of memory: needed more than {MEMORY_SHARE:.0%} of the memory available "
                                    "when it started")
            send.send(("error", f"{err}" if isinstance(err, QuantizeError) else
                       f"{type(err).__name__}: {' '.join(str(err).split())[:300]}", traceback.format_exc()[-2000:]))
        finally:
            send.close()

    process = context.Process(target=child, daemon=True)
    process.start()
    send.close()
    try:
        message = receive.recv()
    except EOFError:  # the child died without a word: a native crash
        message = None
    finally:
        process.join()
        receive.close()
    if message is None:
        code = process.exitcode
        why = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        raise QuantizeError(f"the quantizer crashed ({why}) in {getattr(fn, '__name__', 'its process')}")
    if message[0] == "error":
        raise QuantizeError(message[1])
    return message[1]
