"""A bundle's manifest and files, read and checked by one implementation for the toolkit and the runtime.

Torch-free (the standard library and `jsonschema`): `toolkit.runtime.open_bundle` and
`toolkit.deploy.bundle.open_bundle` both read a bundle through these functions, each raising its own
one-line error type (`error`: RuntimeInputError here, BundleError in the toolkit). What they check:
the manifest as a regular file of at most 16 MiB, valid JSON, nested at most 32 levels, the schema
version, `toolkit/data/bundle_manifest.schema.json` (errors name the JSON path), the
cross-references (every named file listed, no path listed twice); the bundle's files as regular
files only (a link or special file anywhere is refused), paths that stay inside the bundle, and
each listed file's size and sha256 (missing, modified and unlisted files). The toolkit adds the
checks that need its component declarations and backends (`toolkit.deploy.bundle.check_declarations`,
the artifact suffix of each format).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Mapping
from functools import lru_cache
from importlib.resources import files
from pathlib import Path, PurePosixPath

from .errors import RuntimeInputError

SCHEMA_ID = "esam3-toolkit.bundle/1"
MANIFEST = "manifest.json"
ON_DEVICE_DIR = "engines"  # engines built on the device land here
ON_DEVICE_SUFFIXES = (".plan", ".engine", ".log", ".timing")
_CHUNK = 1 << 24


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 16 MiB chunks (bundle checksums and the export cache's records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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


def short_repr(value) -> str:
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
        return f"{at}: unknown key {short_repr(value)}" + (f", expected one of {', '.join(map(str, allowed))}"
                                                       if allowed else "")
    if keyword == "type":
        types = [expected] if isinstance(expected, str) else expected
        return (f"{at} is {short_repr(value)} ({kinds.get(type(value), type(value).__name__)}), "
                f"expected {described or ' or '.join(expected_kinds[t] for t in types)}")
    if keyword == "const":
        return f"{at} is {short_repr(value)}, expected {expected!r}"
    if keyword == "enum":
        return f"{at} is {short_repr(value)}, expected one of {', '.join(map(str, expected))}"
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
        return f"{at} is {short_repr(value)}, expected {'>=' if keyword == 'minimum' else '<='} {expected}"
    if keyword in ("pattern", "oneOf", "anyOf"):
        return f"{at} is {short_repr(value)}, expected {described or 'another form (see the schema)'}"
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


def check_manifest(manifest: dict, where: str, error: type[Exception] = RuntimeInputError,
                   suffixes: Mapping[str, str] | None = None) -> None:
    """Schema version, then the schema, then the cross-references; raises `error`. `suffixes` (format ->
    artifact suffix; the toolkit passes its backends') adds the check of each artifact's suffix."""
    if not isinstance(manifest, dict):
        raise error(f"{where}: invalid manifest: it is {_KINDS.get(type(manifest), 'not an object')}, "
                    "expected an object")
    version = manifest.get("schema")
    if version != SCHEMA_ID:
        raise error(f"{where}: manifest schema {short_repr(version)} is not supported "
                    f"(this toolkit reads {SCHEMA_ID})")
    errors = schema_errors(manifest, manifest_schema())
    if not errors:  # the structure is known from here on
        paths = [f["path"] for f in manifest["files"]]
        errors += [f"manifest.files lists {p!r} twice" for p in sorted({p for p in paths if paths.count(p) > 1})]
        for name, comp in manifest["components"].items():
            artifact, fmt, field = comp["file"], comp["format"], f"manifest.components.{name}.file"
            suffix = (suffixes or {}).get(fmt, "")
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
        raise error(f"{where}: invalid manifest: {errors[0]}{more}")


def on_device(rel: str) -> bool:
    return rel.startswith(ON_DEVICE_DIR + "/") and rel.endswith(ON_DEVICE_SUFFIXES)


def _reraise(e: OSError):
    raise e


def walk_files(root: Path, error: type[Exception] = RuntimeInputError) -> list[str]:
    """Relative POSIX paths of every regular file under `root`, links never followed.

    A bundle is read only through its own regular files: a symbolic link anywhere (file or
    directory; it could point outside the bundle) or a special file (a FIFO would block a read)
    is refused with `error`."""
    found = []
    try:
        for dirpath, dirnames, filenames in os.walk(root, onerror=_reraise):  # followlinks=False
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                mode = path.lstat().st_mode
                rel = path.relative_to(root).as_posix()
                if stat.S_ISLNK(mode):
                    raise error(f"bundle {root}: {rel} is a symbolic link; a bundle holds regular files "
                                "only (a link could point outside it)")
                if stat.S_ISREG(mode):
                    found.append(rel)
                elif not stat.S_ISDIR(mode):
                    raise error(f"bundle {root}: {rel} is not a regular file or directory")
    except OSError as e:
        raise error(f"bundle {root}: cannot list its files: {e.strerror or e}") from e
    return sorted(found)


def bundle_files(root: Path, error: type[Exception] = RuntimeInputError) -> Iterator[str]:
    """Relative POSIX paths of the files a manifest lists (all but itself and on-device outputs)."""
    yield from (rel for rel in walk_files(root, error) if rel != MANIFEST and not on_device(rel))


def check_files(root: Path, manifest: dict, error: type[Exception] = RuntimeInputError) -> list[str]:
    """Problems with the bundle's files: missing, modified (size or sha256), unlisted. Raises
    `error` for a link or a special file anywhere in the bundle (see `walk_files`)."""
    present = set(bundle_files(root, error))
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


def inside(root: Path, rel: str, error: type[Exception] = RuntimeInputError) -> Path:
    """`root / rel`, refused (`error`) unless it stays inside `root` without passing a link."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise error(f"bundle {root}: path {rel!r} is not inside the bundle")
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise error(f"bundle {root}: {path.relative_to(root).as_posix()} is a symbolic link; a bundle "
                        "holds regular files only (a link could point outside it)")
    return path


def read_manifest(root: str | Path, error: type[Exception] = RuntimeInputError,
                  suffixes: Mapping[str, str] | None = None) -> dict:
    """The manifest of the bundle directory `root`, read (regular file, size cap, JSON) and checked
    (`check_manifest`); raises `error` with one line."""
    root = Path(root)
    path = root / MANIFEST
    if not root.exists():
        raise error(f"bundle {root} does not exist")
    if not root.is_dir():
        raise error(f"bundle {root} is not a directory (an archive? extract it, or use `toolkit verify {root}`)")
    if path.is_symlink():
        raise error(f"bundle {root}: {MANIFEST} is a symbolic link; a bundle holds regular files only")
    if not path.is_file():
        raise error(f"bundle {root}: no {MANIFEST}: not a finished bundle (an interrupted build leaves none)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise error(f"bundle {root}: {MANIFEST} is {path.stat().st_size:,} bytes; a manifest is at most "
                    f"{MAX_MANIFEST_BYTES:,}")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"bundle {root}: {MANIFEST} is not valid JSON: {e}") from e
    except RecursionError as e:  # the parser recurses per nesting level
        raise error(f"bundle {root}: {MANIFEST} nests too deeply to be a manifest") from e
    except OSError as e:
        raise error(f"bundle {root}: cannot read {MANIFEST}: {e.strerror or e}") from e
    check_manifest(manifest, f"bundle {root}", error, suffixes)
    return manifest
