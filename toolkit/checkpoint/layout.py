"""The key layout of the EfficientSAM3 RepViT-M0.9 + MobileCLIP-S1 checkpoint, as packaged data.

`toolkit/data/layout.json` lists every entry of the released checkpoint (2,028 keys) with shape,
dtype and flags, and the prefix rule that groups keys into the components of the report the
checkpoint was described with. Everything that needs "what should be in the file" reads it here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

CHECKPOINT_NAME = "efficient_sam3_repvit-m0_9_mobileclip_s1.pth"
MODEL_NAME = "EfficientSAM3 RepViT-M0.9 + MobileCLIP-S1"

# The teacher's SAM3 ViT trunk that older converters left in published checkpoints; never used.
DEAD_TRUNK_PREFIXES = tuple(
    "detector.backbone.vision_backbone.trunk." + p
    for p in ("blocks.", "pos_embed", "patch_embed.", "ln_pre.")
)


@dataclass(frozen=True)
class Entry:
    key: str
    shape: tuple[int, ...]
    dtype: str
    flags: str

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def dead(self) -> bool:
        return is_dead_trunk_key(self.key)


def is_dead_trunk_key(key: str) -> bool:
    return key.startswith(DEAD_TRUNK_PREFIXES)


def data_path(name: str):
    return resources.files("toolkit") / "data" / name


@lru_cache(maxsize=1)
def _raw() -> dict:
    return json.loads(data_path("layout.json").read_text())


@lru_cache(maxsize=1)
def entries() -> tuple[Entry, ...]:
    """All 2,028 entries of the released checkpoint, dead trunk included, in converter order."""
    return tuple(Entry(k, tuple(s), d, f) for k, s, d, f in _raw()["keys"])


def live_entries() -> tuple[Entry, ...]:
    """The 1,608 entries the model uses (detector + tracker)."""
    return tuple(e for e in entries() if not e.dead)


def component_rule() -> list[tuple[str, str]]:
    return [tuple(r) for r in _raw()["component_rule"]]


def component_of(key: str) -> str:
    """Report component of a key: the first matching prefix wins."""
    for prefix, component in component_rule():
        if key.startswith(prefix):
            return component
    raise KeyError(key)
