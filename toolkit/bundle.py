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
The schema is plain JSON Schema so that apps can validate a manifest with any library; the small
validator here covers the keywords the schema uses.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path, PurePosixPath

from .convert.cache import file_sha256
from .errors import ToolkitError

SCHEMA_ID = "esam3-toolkit.bundle/1"
MANIFEST = "manifest.json"
ON_DEVICE_DIR = "engines"  # engines built on the device land here
ON_DEVICE_SUFFIXES = (".plan", ".engine", ".log", ".timing")


class BundleError(ToolkitError):
    """A bundle that must not be used: the message says which file and why, in one line."""


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    return json.loads(files("toolkit").joinpath("data", "bundle_manifest.schema.json").read_text())


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(value, schema: dict, where: str = "manifest", root: dict | None = None) -> list[str]:
    """Violations of a JSON Schema (the keywords our schema uses: $ref, type, const, enum,
    required, properties, additionalProperties, items), each naming the JSON path."""
    root = root or schema
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        return schema_errors(value, node, where, root)
    if "const" in schema and value != schema["const"]:
        return [f"{where} is {value!r}, expected {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where} is {value!r}, expected one of {schema['enum']}"]
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_type_ok(value, t) for t in types):
            return [f"{where} is {type(value).__name__}, expected {' or '.join(types)}"]
    errors = []
    if isinstance(value, dict):
        errors += [f"{where}: missing '{key}'" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], f"{where}.{key}", root)
            elif extra is False:
                errors.append(f"{where}: unexpected key '{key}'")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{where}.{key}", root)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]", root)
    return errors


def check_manifest(manifest: dict, where: str) -> None:
    """Schema version, then the schema, then the cross-references; raises BundleError."""
    version = manifest.get("schema") if isinstance(manifest, dict) else None
    if version != SCHEMA_ID:
        raise BundleError(f"{where}: manifest schema {version!r} is not supported (this toolkit reads {SCHEMA_ID})")
    errors = schema_errors(manifest, manifest_schema())
    listed = {f["path"] for f in manifest.get("files", []) if isinstance(f, dict) and "path" in f}
    for name, comp in manifest.get("components", {}).items():
        artifact = comp.get("file", "")
        if artifact not in listed and not any(p.startswith(artifact + "/") for p in listed):
            errors.append(f"manifest.components.{name}.file {artifact!r} is not among the listed files")
    if errors:
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BundleError(f"{where}: invalid manifest: {errors[0]}{more}")


def _on_device(rel: str) -> bool:
    return rel.startswith(ON_DEVICE_DIR + "/") and rel.endswith(ON_DEVICE_SUFFIXES)


def bundle_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of the files a manifest lists (all but itself and on-device outputs)."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != MANIFEST and not _on_device(rel):
            yield rel


def file_entries(root: Path) -> list[dict]:
    return [{"path": rel, "sha256": file_sha256(root / rel), "bytes": (root / rel).stat().st_size}
            for rel in bundle_files(root)]


def check_files(root: Path, manifest: dict) -> list[str]:
    """Problems with the bundle's files: missing, modified (size or sha256), unlisted."""
    problems = []
    listed = {entry["path"]: entry for entry in manifest["files"]}
    for rel, entry in listed.items():
        path = root / rel
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            problems.append(f"file {rel} is listed with a path outside the bundle")
        elif not path.is_file():
            problems.append(f"file {rel} is missing")
        elif path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            problems.append(f"file {rel} does not match its sha256 in the manifest (modified after the build)")
    problems += [f"file {rel} is not listed in the manifest" for rel in bundle_files(root) if rel not in listed]
    return problems


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]

    def path(self, rel: str) -> Path:
        return self.root / rel

    def on_device_files(self) -> list[str]:
        engines = self.root / ON_DEVICE_DIR
        return sorted(p.relative_to(self.root).as_posix() for p in engines.rglob("*")
                      if p.is_file() and _on_device(p.relative_to(self.root).as_posix())) if engines.is_dir() else []


def read_manifest(root: str | Path) -> dict:
    root = Path(root)
    path = root / MANIFEST
    if not root.exists():
        raise BundleError(f"bundle {root} does not exist")
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory (an archive? use `toolkit verify {root}`)")
    if not path.is_file():
        raise BundleError(f"bundle {root}: no {MANIFEST}: not a finished bundle (an interrupted build leaves none)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"bundle {root}: {MANIFEST} is not valid JSON: {e}") from e
    check_manifest(manifest, f"bundle {root}")
    return manifest


def open_bundle(root: str | Path, checksums: bool = True) -> Bundle:
    """Schema and (by default) every checksum checked; raises BundleError on the first problem."""
    root = Path(root)
    manifest = read_manifest(root)
    if checksums:
        problems = check_files(root, manifest)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BundleError(f"bundle {root}: {problems[0]}{more}")
    return Bundle(root, manifest)


def write_manifest(root: Path, manifest: dict) -> None:
    """Validated, then written under a temporary name and renamed: readers never see half a file."""
    check_manifest(manifest, f"bundle {root}")
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
    except (tarfile.TarError, OSError) as e:
        raise BundleError(f"archive {archive}: cannot read it: {e}") from e
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
