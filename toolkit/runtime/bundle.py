"""Opening a bundle without the toolkit: the manifest read and checked, paths that stay inside the
bundle without passing a link, and (by default) every listed file's size and sha256.

The checks are `manifest.py`'s, the same functions `toolkit.deploy.bundle` reads bundles with (one
implementation), raising RuntimeInputError here. `toolkit run` opens bundles with
`toolkit.deploy.bundle.open_bundle` (which also checks the manifest against the component declarations)
and hands the result to `Bundle`; this reader is for apps and `toolkit-run`, which have only the
runtime installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import RuntimeInputError
from .manifest import check_files, inside, read_manifest


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict

    def path(self, rel: str) -> Path:
        """`root / rel`, refused unless it stays inside the bundle without passing a symbolic link."""
        return inside(self.root, rel, RuntimeInputError)


def open_bundle(root: str | Path, checksums: bool = True) -> Bundle:
    """A bundle directory with its manifest validated and (by default) every file's sha256 checked."""
    root = Path(root)
    manifest = read_manifest(root, RuntimeInputError)
    if checksums:
        problems = check_files(root, manifest, RuntimeInputError)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise RuntimeInputError(f"bundle {root}: {problems[0]}{more}")
    return Bundle(root, manifest)
