"""The component table of a checkpoint (`toolkit inspect`): numbers, entries, share, origin, export.

Components follow the report the checkpoint was described with (prefix rule in the packaged
layout); the Vision Encoder row is split into what it really holds, including the dead SAM3 ViT
trunk that a deployment drops.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from . import layout

DETECTOR_COMPONENTS = ("Text Encoder", "Vision Encoder", "Scoring Module", "Geometry Encoder",
                       "Segmentation Head", "Transformer Fusion")
TRACKER_COMPONENTS = ("Memory Encoder Backbone", "Object Pointer", "SAM Mask Decoder", "SAM Prompt Encoder",
                      "Memory Attention", "Mask Downsample", "Maskmem Tpos Enc", "No Mem Embed",
                      "No Mem Pos Enc", "No Obj Embed Spatial", "No Obj Ptr")
DISTILLED = {"Text Encoder": "MobileCLIP-S1 (distilled)", "Vision Encoder": "RepViT-M0.9 (distilled)"}

# The rating of the report the checkpoint came with (the toolkit's own column is derived from the
# component registry: which exported components read the entries).
REPORT_EXPORT = {
    "Text Encoder": "exportable", "Vision Encoder": "exportable", "Geometry Encoder": "exportable",
    "Scoring Module": "difficult", "Segmentation Head": "difficult",
    "Transformer Fusion": "not exportable (use TorchScript)",
    "Memory Encoder Backbone": "exportable", "Object Pointer": "exportable",
    "SAM Mask Decoder": "exportable", "SAM Prompt Encoder": "exportable", "Memory Attention": "difficult",
}
VISION_PARTS = (
    ("RepViT-M0.9 trunk + head", "detector.backbone.vision_backbone.trunk.model."),
    ("detector neck (convs)", "detector.backbone.vision_backbone.convs."),
    ("tracker neck (sam2_convs)", "detector.backbone.vision_backbone.sam2_convs."),
)


@dataclass
class Row:
    name: str
    numel: int
    keys: int
    share: float
    group: str
    origin: str = ""
    report_export: str = ""
    toolkit_export: str = ""
    level: int = 0


def _count(shapes: Mapping[str, tuple[int, ...]], pred) -> tuple[int, int]:
    n = k = 0
    for key, shape in shapes.items():
        if pred(key):
            size = 1
            for s in shape:
                size *= s
            n += size
            k += 1
    return n, k


def toolkit_export(keys: set[str]) -> str:
    """Which exported components (ONNX + .ptl, each verified) read these entries, or why none does."""
    from ..components.registry import COMPONENT_LIST, UNUSED
    live = [k for k in keys if not layout.is_dead_trunk_key(k)]
    ours = [c.name for c in COMPONENT_LIST if any(k.startswith(c.prefixes) for k in live)]
    if ours:
        return "ONNX + .ptl: " + ", ".join(ours)
    reasons = [why for prefix, why in UNUSED.items() if any(k.startswith(prefix) for k in live)]
    return "not exported: " + "; ".join(reasons) if reasons else ""


def component_rows(shapes: Mapping[str, tuple[int, ...]]) -> list[Row]:
    """Rows of the table for a checkpoint given as key -> shape (dead trunk included if present)."""
    total, total_keys = _count(shapes, lambda k: True)
    share = lambda n: 100.0 * n / total if total else 0.0
    rows: list[Row] = [Row("Total", total, total_keys, 100.0, "total")]
    by_component: dict[str, list[str]] = {}
    for key in shapes:
        by_component.setdefault(layout.component_of(key), []).append(key)
    for group, members in (("Detector", DETECTOR_COMPONENTS), ("Tracker", TRACKER_COMPONENTS)):
        n, k = _count(shapes, lambda key: layout.component_of(key) in members)
        rows.append(Row(group, n, k, share(n), "group"))
        for comp in members:
            keys = set(by_component.get(comp, ()))
            n, k = _count(shapes, keys.__contains__)
            rows.append(Row(comp, n, k, share(n), group, DISTILLED.get(comp, "SAM3 original"),
                            REPORT_EXPORT.get(comp, "unknown"), toolkit_export(keys), level=1))
            if comp == "Vision Encoder":
                for part, prefix in VISION_PARTS:
                    n, k = _count(shapes, lambda key: key.startswith(prefix))
                    rows.append(Row(part, n, k, share(n), group, level=2))
                n, k = _count(shapes, layout.is_dead_trunk_key)
                rows.append(Row("dead SAM3 ViT trunk", n, k, share(n), group, "SAM3 teacher, unused", "",
                                "dropped (never used)", level=2))
    return rows


def format_table(rows: list[Row]) -> str:
    head = ("component", "numbers", "entries", "share", "origin", "report export", "toolkit")
    body = [("  " * r.level + r.name, f"{r.numel:,}", f"{r.keys:,}", f"{r.share:.1f}%", r.origin,
             r.report_export, r.toolkit_export) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    align = lambda cells: "  ".join(
        str(c).rjust(w) if i in (1, 2, 3) else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [align(head), "  ".join("-" * w for w in widths)]
    lines += [align(b) for b in body]
    return "\n".join(line.rstrip() for line in lines)


def as_json(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
