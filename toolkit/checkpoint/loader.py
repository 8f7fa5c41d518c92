"""Loading an EfficientSAM3 checkpoint safely and checking it against the packaged layout.

Untrusted files are read with `torch.load(weights_only=True)`: the restricted unpickler builds
tensors and plain containers only, so a pickle that would run code is refused, not executed.
`mmap=True` maps the zip's tensor storage instead of reading it, so the 2.3 GB released file is
not held twice in memory. Every problem ends as one ToolkitError naming the keys involved.
"""
from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ToolkitError
from . import layout

SUPPORTED = f"supported: {layout.MODEL_NAME} ({layout.CHECKPOINT_NAME})"
_MAX_NAMED = 5

VISION = "detector.backbone.vision_backbone.trunk."
TEXT = "detector.backbone.language_backbone."


@dataclass
class Checkpoint:
    """A validated state dict (live keys only) and what was dropped on the way."""

    state_dict: dict[str, torch.Tensor]
    path: str
    dead_keys: int = 0
    dead_numel: int = 0
    container: str = "{'model': state_dict}"
    meta: dict = field(default_factory=dict)

    def with_prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        """The entries under `prefix`, with the prefix stripped (what a submodule loads)."""
        return {k[len(prefix):]: v for k, v in self.state_dict.items() if k.startswith(prefix)}


def _names(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_NAMED])
    return shown + (f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _unsafe_global(text: str) -> str:
    """The callable a refused pickle names (torch's message says '... GLOBAL module.name ...')."""
    marker = "GLOBAL "
    return text.split(marker, 1)[1].split()[0] if marker in text else "unsupported objects"


def read_raw(path: str | Path) -> tuple[dict[str, torch.Tensor], str, dict]:
    """Unpickle safely and unwrap the container; returns (state_dict, container, meta)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"checkpoint {path} does not exist or is not a file")
    with path.open("rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (or, in the legacy format, a pickle starting with PROTO 0x80).
    if magic[:4] != b"PK\x03\x04" and magic[:1] != b"\x80":
        raise ToolkitError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        text = str(e)
        if "GLOBAL " in text or "Weights only load failed" in text:
            raise ToolkitError(f"{path}: refused to unpickle: it asks for {_unsafe_global(text)}, more than "
                               "tensors and plain containers; code in a checkpoint is never executed") from None
        raise ToolkitError(f"{path}: not a readable PyTorch checkpoint (corrupt pickle): {_first_line(e)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise ToolkitError(f"{path}: not a readable PyTorch checkpoint (truncated or damaged?): "
                           f"{_first_line(e)}") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        extra = sorted(set(obj) - {"model", "meta"})
        if extra:
            raise ToolkitError(f"{path}: unexpected top-level entries {extra} beside 'model'")
        meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
        sd, container = obj["model"], "{'model': state_dict}"
    elif isinstance(obj, Mapping):
        sd, container, meta = obj, "bare state_dict", {}
    else:
        raise ToolkitError(f"{path}: holds a {type(obj).__name__}, not a state dict or {{'model': state_dict}}")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ToolkitError(f"{path}: entries that are not named tensors: {_names(bad)}")
    if not sd:
        raise ToolkitError(f"{path}: the state dict is empty")
    return dict(sd), container, dict(meta)


def identify(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Name the model a foreign state dict holds, or None if it looks like ours."""
    keys = list(sd)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)
    if not has("detector.") and not has("tracker."):
        if has("image_encoder.") and has("mask_decoder."):
            return "a SAM / SAM2-style model (image_encoder/mask_decoder keys), not SAM3"
        return "not a SAM3-family model (no 'detector.' or 'tracker.' keys)"
    found = []
    if has(VISION + "model.backbone."):
        stem = sd.get(VISION + "model.backbone.model.features.0.0.c.weight")
        if stem is None:
            kind = ("EfficientViT" if has(VISION + "model.backbone.model.input_stem")
                    else "TinyViT" if has(VISION + "model.backbone.model.patch_embed") else "an unknown")
            found.append(f"{kind} image encoder")
        elif stem.shape[0] != 24:
            variant = {32: "M1.1", 40: "M1.5", 48: "M2.3"}.get(stem.shape[0], f"stem width {stem.shape[0]}")
            found.append(f"RepViT-{variant} image encoder")
    elif has(VISION + "model.") or has(VISION + "student_trunk."):
        found.append("an EfficientSAM3 student image encoder of another family")
    elif has(VISION + "blocks."):
        found.append("the SAM3 ViT-H image encoder (full SAM3)")
    if has(TEXT + "encoder.transformer.resblocks.") or has(TEXT + "encoder.resblocks."):
        found.append("the SAM3 text encoder (full SAM3)")
    else:
        emb = sd.get(TEXT + "encoder.embedding_layer.weight")
        n_layers = len({k.split(".")[5] for k in keys if k.startswith(TEXT + "encoder.transformer.")})
        if emb is not None and (emb.shape[1] != 512 or n_layers != 12):
            found.append(f"a MobileCLIP text encoder of width {emb.shape[1]} with {n_layers} "
                         f"transformer layers (MobileCLIP-S1 has 512 / 12)")
    return " and ".join(found) if found else None


def validate(sd: Mapping[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], int, int]:
    """Check `sd` against the layout; returns (live state dict, dead keys, dead numel)."""
    foreign = identify(sd)
    if foreign:
        raise ToolkitError(f"{where}: this checkpoint holds {foreign}; {SUPPORTED}")
    expected = {e.key: e for e in layout.live_entries()}
    dead = [k for k in sd if layout.is_dead_trunk_key(k)]
    unexpected = [k for k in sd if k not in expected and not layout.is_dead_trunk_key(k)]
    if unexpected:
        raise ToolkitError(f"{where}: {len(unexpected)} unexpected keys: {_names(unexpected)}")
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ToolkitError(f"{where}: {len(missing)} missing keys: {_names(missing)}")
    wrong_shape = [f"{k} {list(sd[k].shape)} (expected {list(e.shape)})"
                   for k, e in expected.items() if tuple(sd[k].shape) != e.shape]
    if wrong_shape:
        raise ToolkitError(f"{where}: shape mismatch: {_names(wrong_shape)}")
    wrong_dtype = [f"{k} {str(sd[k].dtype).replace('torch.', '')} (expected {e.dtype})"
                   for k, e in expected.items() if str(sd[k].dtype).replace("torch.", "") != e.dtype]
    if wrong_dtype:
        raise ToolkitError(f"{where}: dtype mismatch: {_names(wrong_dtype)}")
    non_finite = [k for k in expected if sd[k].is_floating_point() and not bool(torch.isfinite(sd[k]).all())]
    if non_finite:
        raise ToolkitError(f"{where}: non-finite values (NaN/Inf) in {_names(non_finite)}")
    live = {k: sd[k] for k in expected}
    return live, len(dead), sum(sd[k].numel() for k in dead)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read, validate and drop the dead SAM3 ViT trunk; raises ToolkitError on any problem."""
    sd, container, meta = read_raw(path)
    live, dead_keys, dead_numel = validate(sd, str(path))
    return Checkpoint(live, str(path), dead_keys, dead_numel, container, meta)


@dataclass(frozen=True)
class Weights:
    """What a command runs on: the state dict and one label saying where it came from, used
    everywhere the weights are named."""

    state: dict[str, torch.Tensor]
    label: str
    embedded_default: bool

    def under(self, prefix: str) -> dict[str, torch.Tensor]:
        """The entries under `prefix`, with the prefix stripped (what a submodule loads)."""
        return {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}


def resolve_weights(checkpoint_path: str | Path | None = None, prefixes: tuple[str, ...] = ("",)) -> Weights:
    """The checkpoint's weights under `prefixes` (loaded without running pickled code, validated), or
    without one the embedded default (deterministic weights, NOT the trained ones: the label says so;
    only the entries under `prefixes` are generated)."""
    if checkpoint_path is None:
        from .weights import LABEL, synthetic_state_dict
        state = {prefix + k: v for prefix in prefixes for k, v in synthetic_state_dict(prefix).items()}
        return Weights(state, f"embedded default checkpoint: {LABEL}", True)
    ckpt = load_checkpoint(checkpoint_path)
    return Weights({k: v for k, v in ckpt.state_dict.items() if k.startswith(prefixes)},
                   str(ckpt.meta.get("weights") or f"checkpoint {checkpoint_path}"), False)
