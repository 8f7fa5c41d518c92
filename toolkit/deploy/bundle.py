"""Bundles on disk: the manifest (versioned schema, validated on read), checksums, archives.

A bundle is a directory that an app on the target loads with nothing else:

    manifest.json             what everything is (schema `esam3-toolkit.bundle/1`,
                              toolkit/data/bundle_manifest.schema.json), written last
    models/<component>.<ext> one artifact per component (.onnx, .ort, .mlpackage/, .ptl)
    tokenizer/                the CLIP BPE vocabulary and its licence
    prompt_cache.npz          text-encoder outputs of the concepts given at build time (optional)
    required_operators.config ONNX Runtime Mobile reduced-build operator list (android)
    engines/build_engines.sh  the on-device TensorRT engine build (jetson); the engines it writes
                              (engines/*.plan, *.log) are the only files the checksums do not cover

Every other file is listed in the manifest with its sha256 and size; reading a bundle checks the
schema, then every file (missing, modified or unlisted files are refused with a one-line error).
The schema is plain JSON Schema (draft 2020-12) so that apps can validate a manifest with any
library; the toolkit uses `jsonschema`. The manifest itself is covered by no checksum, so its
tensors and dimension ranges are also checked against the component declarations
(`check_declarations`). Files are read only through the bundle's own regular files: links and
special files are refused, in a directory as in an archive. Reading and checking the manifest and
the files is one implementation, `toolkit/runtime/manifest.py` (torch-free, shared with the
runtime); this module adds the declarations, the backends' artifact suffixes, writing and archives.
"""
from __future__ import annotations

import json
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..backends import BACKENDS
from ..errors import ToolkitError
from ..runtime import manifest as manifest_files
from ..runtime.manifest import (  # noqa: F401 - MANIFEST, SCHEMA_ID, the schema's: imported from here too
    MANIFEST,
    SCHEMA_ID,
    file_sha256,
    manifest_schema,
    on_device,
    schema_errors,
    short_repr,
)


class BundleError(ToolkitError):
    """A bundle that must not be used: the message says which file and why, in one line."""


def check_manifest(manifest: dict, where: str) -> None:
    """Schema version, schema, cross-references and each artifact's suffix; raises BundleError."""
    manifest_files.check_manifest(manifest, where, BundleError, {name: b.suffix for name, b in BACKENDS.items()})


def check_declarations(manifest: dict, where: str) -> None:
    """The manifest's tensors and dimension ranges against this toolkit's component declarations.

    The manifest is covered by no checksum, and verification runs only the cases inside an
    artifact's recorded ranges: a narrowed range would silently drop cases. Every artifact takes
    the declared ranges, except Core ML, which starts a range at 1 instead of 0 (no zero-size
    tensors) - the only narrowing a build makes. Raises BundleError naming the first difference."""
    from ..components.registry import COMPONENTS
    from ..components.spec import DIMS

    errors = []
    for name, dim in DIMS.items():
        want = {"min": dim.min, "typical": dim.typical, "max": dim.max}
        got = {k: v for k, v in manifest["dims"].get(name, {}).items() if k != "doc"}
        if got != want:
            errors.append(f"manifest.dims.{name} is {got}, the declaration says {want}")
    for name, entry in manifest["components"].items():
        comp, at = COMPONENTS[name], f"manifest.components.{name}"
        for kind, specs in (("inputs", comp.inputs), ("outputs", comp.outputs)):
            declared = [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape),
                         "range": list(s.range) if s.range else None} for s in specs]
            got = [{k: e.get(k) for k in ("name", "dtype", "shape", "range")} for e in entry[kind]]
            if got != declared:
                bad = next((i for i, (g, d) in enumerate(zip(got, declared)) if g != d), min(len(got), len(declared)))
                errors.append(f"{at}.{kind}[{bad}] differs from the declaration ({short_repr(got[bad:bad + 1])} vs "
                              f"{short_repr(declared[bad:bad + 1])})")
        low = 1 if entry["format"] == "coreml" else 0
        want = {d.name: [max(low, d.min), d.typical, d.max] for d in comp.dims()}
        if entry["dims"] != want:
            bad = sorted(k for k in {*want, *entry["dims"]} if entry["dims"].get(k) != want.get(k))
            diffs = ", ".join(f"{k} is {entry['dims'].get(k)}, expected {want.get(k)}" for k in bad)
            errors.append(f"{at}.dims: {diffs} (the ranges a {entry['format']} artifact of this component takes)")
    if errors:
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BundleError(f"{where}: manifest does not match the component declarations: {errors[0]}{more}")


def walk_files(root: Path) -> list[str]:
    return manifest_files.walk_files(root, BundleError)


def bundle_files(root: Path) -> Iterator[str]:
    return manifest_files.bundle_files(root, BundleError)


def file_entries(root: Path) -> list[dict]:
    return [{"path": rel, "sha256": file_sha256(root / rel), "bytes": (root / rel).stat().st_size}
            for rel in bundle_files(root)]


def check_files(root: Path, manifest: dict) -> list[str]:
    return manifest_files.check_files(root, manifest, BundleError)


def inside(root: Path, rel: str) -> Path:
    return manifest_files.inside(root, rel, BundleError)


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]

    def path(self, rel: str) -> Path:
        return inside(self.root, rel)

    def on_device_files(self) -> list[str]:
        return [rel for rel in walk_files(self.root) if on_device(rel)]


def read_manifest(root: str | Path) -> dict:
    return manifest_files.read_manifest(root, BundleError, {name: b.suffix for name, b in BACKENDS.items()})


def open_bundle(root: str | Path, checksums: bool = True) -> Bundle:
    """Schema, the component declarations and (by default) every checksum checked; raises
    BundleError on the first problem."""
    root = Path(root)
    manifest = read_manifest(root)
    if checksums:
        problems = check_files(root, manifest)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BundleError(f"bundle {root}: {problems[0]}{more}")
    check_declarations(manifest, f"bundle {root}")
    return Bundle(root, manifest)


def write_manifest(root: Path, manifest: dict) -> None:
    """Validated, then written under a temporary name and renamed: readers never see half a file."""
    check_manifest(manifest, f"bundle {root}")
    check_declarations(manifest, f"bundle {root}")
    tmp = root / f".{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, root / MANIFEST)


# --- archives ---------------------------------------------------------------------------------

def create_archive(root: Path, archive: Path) -> Path:
    """`root` as a .tar.gz with one top-level directory (the bundle's name); atomic."""
    tmp = archive.with_name(f".{archive.name}.partial")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(root, arcname=root.name, recursive=True)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    return archive


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _unsafe_member(member: tarfile.TarInfo) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        return "its path escapes the target directory"
    if member.issym() or member.islnk():
        return "it is a link"
    if not (member.isfile() or member.isdir()):
        return "it is not a regular file or directory"
    return None


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a bundle archive into `dest` (which must not exist yet) and return the bundle directory.

    Every member is checked before anything is written: absolute paths, `..`, links and special
    files are refused (one-line error, nothing extracted). Extraction goes to a temporary sibling
    renamed at the end, so an interrupted extraction leaves no directory behind.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise BundleError(f"{dest} exists; extract into a new directory")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = _unsafe_member(member)
                if reason:
                    raise BundleError(f"archive {archive}: refusing member {member.name!r}: {reason}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
            try:
                tar.extractall(tmp, members=members, filter="data")
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except tarfile.ReadError as e:
        reason = "not a tar archive (plain, gzip, bz2 or xz)" if "opened successfully" in str(e) else _one_line(e)
        raise BundleError(f"archive {archive}: cannot read it: {reason}") from e
    # a truncated or corrupt compressed stream ends in EOFError / zlib.error / LZMAError, not TarError
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise BundleError(f"archive {archive}: cannot read it (truncated or corrupt?): {_one_line(e)}") from e
    tmp.rename(dest)
    tops = sorted({PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts})
    return dest / tops[0] if len(tops) == 1 and (dest / tops[0]).is_dir() else dest


@contextmanager
def unpacked(path: str | Path) -> Iterator[Path]:
    """A bundle directory for `path`: the directory itself, or an archive extracted to a temporary one."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise BundleError(f"bundle {path} does not exist")
    with tempfile.TemporaryDirectory(prefix="esam3-bundle-") as tmp:
        yield extract_archive(path, Path(tmp) / "bundle")
