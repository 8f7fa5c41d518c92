"""Writing result directories without ever leaving a half-written one or clobbering user files."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ToolkitError


@contextmanager
def fresh_output_dir(out: str | Path, force: bool = False):
    """Yield a temporary sibling directory; on success it becomes `out`, on failure it is removed.

    An existing non-empty `out` is refused unless `force` (then it is replaced only once the new
    results are complete).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ToolkitError(f"--out {out} exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
