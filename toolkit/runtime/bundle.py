"""Reading a bundle without the toolkit: manifest (size cap, JSON, schema id, JSON Schema), paths
that stay inside the bundle without passing a link, and the sha256 of every listed file.

`toolkit run` opens bundles with `toolkit.bundle.open_bundle` (which also checks the manifest
against the component declarations) and hands the result to `Bundle`; this reader is for apps and
`toolkit-run`, which have only the runtime installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath

from .errors import RuntimeInputError

SCHEMA_ID = "esam3-toolkit.bundle/1"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 2**20
ON_DEVICE = ("engines/",)  # engines built on the device are not covered by checksums


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict

    def path(self, rel: str) -> Path:
        """`root / rel`, refused unless it stays inside the bundle without passing a symbolic link."""
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
            raise RuntimeInputError(f"bundle {self.root}: path {rel!r} is not inside the bundle")
        path = self.root
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise RuntimeInputError(f"bundle {self.root}: {rel} passes a symbolic link; a bundle holds "
                                        "regular files only")
        return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _regular_files(root: Path) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):  # links are never followed
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise RuntimeInputError(f"bundle {root}: {rel} is a symbolic link; a bundle holds regular files only")
            if stat.S_ISREG(mode):
                found.add(rel)
            elif not stat.S_ISDIR(mode):
                raise RuntimeInputError(f"bundle {root}: {rel} is not a regular file or directory")
    return found


def open_bundle(root: str | Path, checksums: bool = True) -> Bundle:
    """A bundle directory with its manifest validated and (by default) every file's sha256 checked."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise RuntimeInputError(f"bundle {root} is not a directory")
    if path.is_symlink() or not path.is_file():
        raise RuntimeInputError(f"bundle {root}: no regular {MANIFEST} (not a finished bundle)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise RuntimeInputError(f"bundle {root}: {MANIFEST} is larger than {MAX_MANIFEST_BYTES:,} bytes")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise RuntimeInputError(f"bundle {root}: {MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_ID:
        raise RuntimeInputError(f"bundle {root}: not a {SCHEMA_ID} manifest")
    import jsonschema
    schema = json.loads(files("toolkit").joinpath("data", "bundle_manifest.schema.json").read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(manifest))
    if error is not None:
        at = "manifest" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise RuntimeInputError(f"bundle {root}: invalid manifest: {at}: {' '.join(error.message.split())[:200]}")
    bundle = Bundle(root, manifest)
    if checksums:
        present = {rel for rel in _regular_files(root) if rel != MANIFEST and not rel.startswith(ON_DEVICE)}
        listed = {entry["path"]: entry for entry in manifest["files"]}
        for rel in sorted(set(listed) | present):
            if rel not in listed:
                raise RuntimeInputError(f"bundle {root}: file {rel} is not listed in the manifest")
            if rel not in present:
                raise RuntimeInputError(f"bundle {root}: file {rel} is missing")
            file = bundle.path(rel)
            if file.stat().st_size != listed[rel]["bytes"] or _sha256(file) != listed[rel]["sha256"]:
                raise RuntimeInputError(f"bundle {root}: file {rel} does not match its sha256 in the manifest")
    return bundle
