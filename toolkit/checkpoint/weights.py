"""Deterministic weights with the real checkpoint layout: the embedded default checkpoint.

These are NOT the trained EfficientSAM3 weights (those cannot be downloaded here). They are the
weights the golden reference outputs were made with, so a model loaded with them must reproduce
the golden tensors. Rule, per key (numpy Generator seeded with crc32 of the key, drawn in float64):
  integer buffers -> 0; running_mean -> 0.1 N; running_var -> U(0.5, 1.5);
  1-D/0-D `*bias` -> 0.02 N; other 1-D/0-D floats -> 1 + 0.1 N; >= 2-D -> N / sqrt(fan_in).
Exceptions flagged in the layout: the RepViT BatchNorm statistics are calibrated on the golden photo
(`data/bn_calibration.npz`: without them activations reach ~1e7), one override keeps the tracker's
object-present branch alive, and the dead trunk's complex RoPE tables are the model's init values.
"""
from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import ToolkitError
from ..files.outputs import writing_to
from . import layout

LABEL = "deterministic synthetic weights (golden fixture fill rule), NOT the trained EfficientSAM3 weights"

OVERRIDES = {"tracker.sam_mask_decoder.pred_obj_score_head.layers.2.bias": 2.0}

_NP = {"float32": np.float32, "int64": np.int64, "complex64": np.complex64}


def fill(key: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The rule-filled value of one checkpoint entry (no calibrated or derived exceptions)."""
    np_dtype = _NP[dtype]
    if key in OVERRIDES:
        return np.full(shape, OVERRIDES[key], dtype=np_dtype)
    if np.issubdtype(np_dtype, np.integer):
        return np.zeros(shape, dtype=np_dtype)
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    leaf = key.rsplit(".", 1)[-1]
    if leaf.endswith("running_mean"):
        x = 0.1 * rng.standard_normal(shape)
    elif leaf.endswith("running_var"):
        x = rng.uniform(0.5, 1.5, shape)
    elif len(shape) <= 1 and leaf.endswith("bias"):
        x = 0.02 * rng.standard_normal(shape)
    elif len(shape) <= 1:
        x = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
        x = rng.standard_normal(shape) / np.sqrt(int(np.prod(shape[1:])))
    return np.asarray(x).astype(np_dtype)


def iter_arrays(with_dead_trunk: bool = False, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """(key, value) for every entry of the layout under `prefix`, in checkpoint order."""
    calibration = np.load(layout.data_path("bn_calibration.npz"))
    rope_tables = np.load(layout.data_path("rope_freqs_cis.npz")) if with_dead_trunk else None
    for e in layout.entries():
        if (e.dead and not with_dead_trunk) or not e.key.startswith(prefix):
            continue
        if e.flags == "bn_calibrated":
            yield e.key, calibration[e.key]
        elif "derived:" in e.flags:
            yield e.key, rope_tables[e.flags.split("derived:", 1)[1]]
        else:
            yield e.key, fill(e.key, e.shape, e.dtype)


def synthetic_state_dict(prefix: str | None = None, with_dead_trunk: bool = False) -> dict[str, torch.Tensor]:
    """The deterministic state dict; with `prefix`, only keys under it, prefix stripped."""
    prefix = prefix or ""
    return {key[len(prefix):]: torch.from_numpy(arr) for key, arr in iter_arrays(with_dead_trunk, prefix)}


def write_default_checkpoint(path: str | os.PathLike, with_dead_trunk: bool = False,
                             force: bool = False) -> dict:
    """Write the embedded default checkpoint as `{"model": state_dict}` (the released container).

    Written to a temporary name and renamed, so an interrupted write never leaves a file that
    looks complete; an existing file is kept unless `force`.
    """
    given, path = Path(path), Path(os.path.abspath(path))  # '.' or 'x/..' name no file
    if path.is_dir():
        raise ToolkitError(f"{given} is a directory; name the .pth file to write")
    if path.exists() and not force:
        raise ToolkitError(f"{given} exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise ToolkitError(f"directory {given.parent} does not exist")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with writing_to(given, tmp):  # disk full, read-only, /proc: one line
            # opened before the weights are made, so an unwritable place fails at once; a Python file,
            # so write errors stay OSErrors (torch's own writer raises RuntimeError)
            with open(tmp, "wb") as f:
                sd = synthetic_state_dict(with_dead_trunk=with_dead_trunk)
                torch.save({"model": sd, "meta": {"weights": LABEL}}, f)
            if path.exists():  # --force keeps the permissions of the file it replaces
                os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(given), "keys": len(sd), "numel": sum(t.numel() for t in sd.values()),
            "weights": LABEL}
