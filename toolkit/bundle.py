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
special files are refused, in a directory as in an archive.
"""
from __future__ import annotations

import json
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path, PurePosixPath

from .backends import BACKENDS
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


MAX_MANIFEST_BYTES = 16 * 2**20  # a real manifest is ~100 kB; a larger file is not read into memory
MAX_DEPTH = 32  # a real manifest nests 7 levels; deeper input is refused before any recursive walk


def nesting_depth(value, limit: int = MAX_DEPTH) -> int:
    """Depth of nested lists / dicts, counted iteratively up to `limit` + 1 (no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
          float: "a number", type(None): "null"}
_EXPECTED = {"object": "an object", "array": "an array", "string": "a string", "boolean": "a boolean",
             "integer": "an integer", "number": "a number", "null": "null"}


def json_path(where: str, path) -> str:
    out = where
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_TOML_KINDS = {dict: "a table", "object": "a table"}  # what TOML calls an object


def _message(error, where: str, toml: bool = False) -> str:
    """One line for a jsonschema error: the JSON path, what is there, what was expected."""
    kinds, expected_kinds = (({**_KINDS, **_TOML_KINDS}, {**_EXPECTED, **_TOML_KINDS}) if toml
                             else (_KINDS, _EXPECTED))
    at, value, keyword, expected = json_path(where, error.absolute_path), error.instance, error.validator, \
        error.validator_value
    described = error.schema.get("description") if isinstance(error.schema, dict) else None
    if "propertyNames" in error.relative_schema_path:
        allowed = error.validator_value if keyword == "enum" else None
        return f"{at}: unknown key {_short(value)}" + (f", expected one of {', '.join(map(str, allowed))}"
                                                       if allowed else "")
    if keyword == "type":
        types = [expected] if isinstance(expected, str) else expected
        return (f"{at} is {_short(value)} ({kinds.get(type(value), type(value).__name__)}), "
                f"expected {described or ' or '.join(expected_kinds[t] for t in types)}")
    if keyword == "const":
        return f"{at} is {_short(value)}, expected {expected!r}"
    if keyword == "enum":
        return f"{at} is {_short(value)}, expected one of {', '.join(map(str, expected))}"
    if keyword == "required":
        missing = [k for k in expected if k not in value]
        return f"{at}: missing {', '.join(map(repr, missing))}"
    if keyword == "additionalProperties":
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        return f"{at}: unexpected key(s) {', '.join(map(repr, extra))}"
    if keyword in ("minItems", "maxItems"):
        bound = "at least" if keyword == "minItems" else "at most"
        return f"{at} has {len(value)} item(s), expected {bound} {expected}"
    if keyword == "minProperties":
        return f"{at} is empty, expected at least {expected} entr{'y' if expected == 1 else 'ies'}"
    if keyword == "minLength":
        return f"{at} is empty, expected a non-empty string"
    if keyword in ("minimum", "maximum"):
        return f"{at} is {_short(value)}, expected {'>=' if keyword == 'minimum' else '<='} {expected}"
    if keyword in ("pattern", "oneOf", "anyOf"):
        return f"{at} is {_short(value)}, expected {described or 'another form (see the schema)'}"
    return f"{at}: {' '.join(error.message.split())[:200]}"


def schema_errors(value, schema: dict, where: str = "manifest", toml: bool = False) -> list[str]:
    """Violations of a JSON Schema (jsonschema, draft 2020-12), one line each naming the JSON path
    (`toml`: objects are called tables); the most relevant first."""
    import jsonschema
    from jsonschema.exceptions import relevance

    if nesting_depth(value) > MAX_DEPTH:
        return [f"{where or '(top level)'} nests deeper than {MAX_DEPTH} levels"]
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(value), key=relevance, reverse=True)
    return [_message(e, where, toml) for e in errors]


def _listed_file(manifest: dict, rel: str, field: str, errors: list[str]) -> None:
    if rel not in {f["path"] for f in manifest["files"]}:
        errors.append(f"{field} {rel!r} is not among the listed files")


def check_manifest(manifest: dict, where: str) -> None:
    """Schema version, then the schema, then the cross-references; raises BundleError."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: invalid manifest: it is {_KINDS.get(type(manifest), 'not an object')}, "
                          "expected an object")
    version = manifest.get("schema")
    if version != SCHEMA_ID:
        raise BundleError(f"{where}: manifest schema {_short(version)} is not supported "
                          f"(this toolkit reads {SCHEMA_ID})")
    errors = schema_errors(manifest, manifest_schema())
    if not errors:  # the structure is known from here on
        paths = [f["path"] for f in manifest["files"]]
        errors += [f"manifest.files lists {p!r} twice" for p in sorted({p for p in paths if paths.count(p) > 1})]
        for name, comp in manifest["components"].items():
            artifact, fmt, field = comp["file"], comp["format"], f"manifest.components.{name}.file"
            suffix = BACKENDS[fmt].suffix
            if not artifact.endswith(suffix):
                errors.append(f"{field} {artifact!r} is not an artifact of format {fmt} (expected a {suffix} path)")
            elif fmt == "coreml":  # a package is a directory: its files are listed
                if artifact in paths or not any(p.startswith(artifact + "/") for p in paths):
                    errors.append(f"{field} {artifact!r} is not a listed .mlpackage directory")
            else:
                _listed_file(manifest, artifact, field, errors)
        tokenizer = manifest["tokenizer"]
        for key in ("vocabulary", "license"):
            if key in tokenizer:
                _listed_file(manifest, tokenizer[key], f"manifest.tokenizer.{key}", errors)
        if manifest["prompt_cache"] is not None:
            _listed_file(manifest, manifest["prompt_cache"]["file"], "manifest.prompt_cache.file", errors)
        if manifest.get("engines") and "script" in manifest["engines"]:
            _listed_file(manifest, manifest["engines"]["script"], "manifest.engines.script", errors)
    if errors:
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BundleError(f"{where}: invalid manifest: {errors[0]}{more}")


def check_declarations(manifest: dict, where: str) -> None:
    """The manifest's tensors and dimension ranges against this toolkit's component declarations.

    The manifest is covered by no checksum, and verification runs only the cases inside an
    artifact's recorded ranges: a narrowed range would silently drop cases. Every artifact takes
    the declared ranges, except Core ML, which starts a range at 1 instead of 0 (no zero-size
    tensors) - the only narrowing a build makes. Raises BundleError naming the first difference."""
    from .components import COMPONENTS
    from .spec import DIMS

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
                errors.append(f"{at}.{kind}[{bad}] differs from the declaration ({_short(got[bad:bad + 1])} vs "
                              f"{_short(declared[bad:bad + 1])})")
        low = 1 if entry["format"] == "coreml" else 0
        want = {d.name: [max(low, d.min), d.typical, d.max] for d in comp.dims()}
        if entry["dims"] != want:
            bad = sorted(k for k in {*want, *entry["dims"]} if entry["dims"].get(k) != want.get(k))
            diffs = ", ".join(f"{k} is {entry['dims'].get(k)}, expected {want.get(k)}" for k in bad)
            errors.append(f"{at}.dims: {diffs} (the ranges a {entry['format']} artifact of this component takes)")
    if errors:
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BundleError(f"{where}: manifest does not match the component declarations: {errors[0]}{more}")


def _on_device(rel: str) -> bool:
    return rel.startswith(ON_DEVICE_DIR + "/") and rel.endswith(ON_DEVICE_SUFFIXES)


def _raise(error: OSError):
    raise error


def walk_files(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file under `root`, links never followed.

    A bundle is read only through its own regular files: a symbolic link anywhere (file or
    directory; it could point outside the bundle) or a special file (a FIFO would block a read)
    is refused with BundleError."""
    found = []
    try:
        for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):  # followlinks=False
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                mode = path.lstat().st_mode
                rel = path.relative_to(root).as_posix()
                if stat.S_ISLNK(mode):
                    raise BundleError(f"bundle {root}: {rel} is a symbolic link; a bundle holds regular files "
                                      "only (a link could point outside it)")
                if stat.S_ISREG(mode):
                    found.append(rel)
                elif not stat.S_ISDIR(mode):
                    raise BundleError(f"bundle {root}: {rel} is not a regular file or directory")
    except OSError as e:
        raise BundleError(f"bundle {root}: cannot list its files: {e.strerror or e}") from e
    return sorted(found)


def bundle_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of the files a manifest lists (all but itself and on-device outputs)."""
    yield from (rel for rel in walk_files(root) if rel != MANIFEST and not _on_device(rel))


def file_entries(root: Path) -> list[dict]:
    return [{"path": rel, "sha256": file_sha256(root / rel), "bytes": (root / rel).stat().st_size}
            for rel in bundle_files(root)]


def check_files(root: Path, manifest: dict) -> list[str]:
    """Problems with the bundle's files: missing, modified (size or sha256), unlisted. Raises
    BundleError for a link or a special file anywhere in the bundle (see `walk_files`)."""
    present = set(bundle_files(root))
    problems = []
    for entry in manifest["files"]:
        rel = entry["path"]
        if rel not in present:
            problems.append(f"file {rel} is missing")
        elif (root / rel).stat().st_size != entry["bytes"] or file_sha256(root / rel) != entry["sha256"]:
            problems.append(f"file {rel} does not match its sha256 in the manifest (modified after the build)")
    listed = {entry["path"] for entry in manifest["files"]}
    problems += [f"file {rel} is not listed in the manifest" for rel in sorted(present - listed)]
    return problems


def inside(root: Path, rel: str) -> Path:
    """`root / rel`, refused (BundleError) unless it stays inside `root` without passing a link."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise BundleError(f"bundle {root}: path {rel!r} is not inside the bundle")
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise BundleError(f"bundle {root}: {path.relative_to(root).as_posix()} is a symbolic link; a bundle "
                              "holds regular files only (a link could point outside it)")
    return path


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
        return [rel for rel in walk_files(self.root) if _on_device(rel)]


def read_manifest(root: str | Path) -> dict:
    root = Path(root)
    path = root / MANIFEST
    if not root.exists():
        raise BundleError(f"bundle {root} does not exist")
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory (an archive? use `toolkit verify {root}`)")
    if path.is_symlink():
        raise BundleError(f"bundle {root}: {MANIFEST} is a symbolic link; a bundle holds regular files only")
    if not path.is_file():
        raise BundleError(f"bundle {root}: no {MANIFEST}: not a finished bundle (an interrupted build leaves none)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"bundle {root}: {MANIFEST} is {path.stat().st_size:,} bytes; a manifest is at most "
                          f"{MAX_MANIFEST_BYTES:,}")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"bundle {root}: {MANIFEST} is not valid JSON: {e}") from e
    except RecursionError as e:  # the parser recurses per nesting level
        raise BundleError(f"bundle {root}: {MANIFEST} nests too deeply to be a manifest") from e
    except OSError as e:
        raise BundleError(f"bundle {root}: cannot read {MANIFEST}: {e.strerror or e}") from e
    check_manifest(manifest, f"bundle {root}")
    return manifest


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
