"""Content-hash cache: a provenance record beside each artifact says what it was made from.

Artifact `X` has the record `X.json`: the cache key (a hash of everything the artifact depends
on, composed by the caller: declaration, weights, code, tool versions, exporter parameters), the
artifact's sha256, and what the producing stages reported. A later run that computes the same
key, and finds the file unmodified, reuses the artifact and its record without redoing anything.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.manifest import file_sha256  # one file hash for the cache records and bundle checksums


def digest_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def digest_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hash of names, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def digest_files(paths: Iterable[Path], root: Path) -> str:
    """Hash of the files' paths (relative to `root`) and contents."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def record_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")


@dataclass
class Lookup:
    record: dict | None
    reason: str  # "hit", or why the artifact has to be made again

    @property
    def hit(self) -> bool:
        return self.record is not None


def lookup(artifact: Path, key: str) -> Lookup:
    path = record_path(artifact)
    if not artifact.is_file() or not path.is_file():
        return Lookup(None, "new")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return Lookup(None, "stale: unreadable record")
    if record.get("key") != key:
        return Lookup(None, "stale: inputs changed")
    if record.get("sha256") != file_sha256(artifact):
        return Lookup(None, "stale: artifact modified")
    return Lookup(record, "hit")


def store(artifact: Path, key: str, record: dict) -> dict:
    """Write the record of a finished artifact (atomically) and return it."""
    record = {**record, "key": key, "sha256": file_sha256(artifact), "file": artifact.name}
    path = record_path(artifact)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)
    return record
