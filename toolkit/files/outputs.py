"""Writing results without ever losing a user's file or leaving a half-written one.

- `guard_outputs`: every command checks its output paths against its inputs before any work: an
  output that is, or contains, an input (image, frames, checkpoint, bundle, ...) is refused whatever
  --force says, and so are two outputs of one command that overlap.
- `fresh_output_dir`: results go to a temporary sibling folder that becomes `out` only when complete.
- `writing_to`: an OSError of writing there (disk full, read-only file system, no permission)
  becomes a one-line ToolkitError.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

from ..errors import ToolkitError

# Write errors that are about the destination whatever file they name.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _real(path: str | os.PathLike) -> Path:
    """The path with symlinks, '.' and '..' resolved (a path that does not exist yet is fine)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def guard_outputs(outputs: Mapping[str, str | os.PathLike | None],
                  inputs: Mapping[str, str | os.PathLike | None] | None = None) -> None:
    """Refuse an output (flag -> path) that is or contains an input, or that overlaps another output.

    An output inside an input folder is fine (`--frames clip --out clip/masks`). Checked on the
    resolved paths, so `--out .`, a trailing '..' or a symlink cannot slip past.
    """
    outs = {flag: (path, _real(path)) for flag, path in outputs.items() if path is not None}
    for flag, (path, real) in outs.items():
        for in_flag, source in (inputs or {}).items():
            if source is not None and _within(_real(source), real):
                what = "is" if _real(source) == real else "contains"
                raise ToolkitError(f"{flag} {path} {what} the input {in_flag} {source}; writing there would "
                                   "replace it: choose another folder")
    items = list(outs.items())
    for i, (flag, (path, real)) in enumerate(items):
        for other, (other_path, other_real) in items[i + 1:]:
            if _within(real, other_real) or _within(other_real, real):
                raise ToolkitError(f"{flag} {path} and {other} {other_path} overlap; give them separate folders")


def error_text(err: OSError, path: Path | None = None) -> str:
    """strerror, or for mkdir under a regular file ('File exists', 'Not a directory') which file."""
    for folder in (path.parents if path is not None else ()):
        if folder.exists():
            if not folder.is_dir():
                return f"{folder} is a file, not a folder"
            break
    return err.strerror or str(err)


def _names_a_path(err: OSError) -> bool:
    return isinstance(err.filename, (str, os.PathLike))


def is_write_error(err: BaseException, *places: Path) -> bool:
    """An OSError about writing: the disk is full / read-only, or it names a path under `places`."""
    if not isinstance(err, OSError):
        return False
    if err.errno in DISK_ERRNOS:
        return True
    names = [Path(os.path.abspath(n)) for n in (err.filename, err.filename2) if isinstance(n, (str, os.PathLike))]
    return any(_within(name, Path(os.path.abspath(place))) for name in names for place in places)


@contextmanager
def writing_to(out: str | os.PathLike, *places: str | os.PathLike):
    """Turn an OSError of writing `out` (or `places`) into a one-line ToolkitError; others pass."""
    try:
        yield
    except OSError as err:
        if is_write_error(err, Path(out), *map(Path, places)):
            raise ToolkitError(f"cannot write {out}: {error_text(err)}") from err
        raise


def make_dirs(path: Path) -> list[Path]:
    """mkdir -p; returns the folders it created, outermost first (to remove them on failure)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    path.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders `make_dirs` created, innermost first, as far as they are empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def fresh_output_dir(out: str | Path, force: bool = False, flag: str = "--out"):
    """Yield a temporary sibling directory; on success it becomes `out`, on failure it is removed.

    An existing non-empty `out` is refused unless `force` (then it is replaced only once the new
    results are complete, keeping its permissions). A new folder gets the usual permissions (umask),
    not the 0700 of the temporary one. `out` may not be the current directory or hold it.
    """
    shown = out
    out = Path(os.path.abspath(out))  # '.' or 'a/..' have no usable name for the sibling
    if _within(_real("."), _real(out)):
        raise ToolkitError(f"{flag} {shown} is the current directory or holds it; name a folder to write into")
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"{flag} {shown} exists and is not a directory")
    try:
        if out.is_dir() and any(out.iterdir()) and not force:
            raise ToolkitError(f"{flag} {shown} exists and is not empty; pass --force to replace it")
        mode = stat.S_IMODE(out.stat().st_mode) if out.is_dir() else 0o777 & ~_umask()
        created = make_dirs(out.parent)
    except OSError as err:  # under /proc, /sys, a regular file, no permission, ...
        raise ToolkitError(f"cannot create {flag} {shown}: {error_text(err, out)}") from err
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as err:
        remove_empty(created)
        raise ToolkitError(f"cannot create {flag} {shown}: {error_text(err)}") from err
    try:
        yield tmp
        tmp.chmod(mode)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)  # put the previous results back
                raise
            old.unlink() if old.is_symlink() else shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(created)
        if is_write_error(err, tmp, out):
            # a failed write() names no file: with two outputs (--save-intermediates) either may be the one
            where = f"{flag} {shown}" if _names_a_path(err) else "the results"
            raise ToolkitError(f"cannot write {where}: {error_text(err)}") from err
        raise
