"""Python API mirroring the CLI: one function per subcommand."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import checkpoint, inventory, layout
from .errors import ToolkitError


@dataclass
class InspectReport:
    path: str
    container: str
    weights_label: str
    rows: list[inventory.Row]
    dead_keys: int
    dead_numel: int
    live_keys: int
    live_numel: int

    def to_json(self) -> dict:
        return {
            "path": self.path, "model": layout.MODEL_NAME, "container": self.container,
            "weights_label": self.weights_label, "components": inventory.as_json(self.rows),
            "dead_trunk": {"keys": self.dead_keys, "numel": self.dead_numel, "dropped": True},
            "live": {"keys": self.live_keys, "numel": self.live_numel},
        }


def inspect_checkpoint(path: str | Path) -> InspectReport:
    """Validate a checkpoint and tabulate its components (dead trunk included, then dropped)."""
    sd, container, meta = checkpoint.read_raw(path)
    live, dead_keys, dead_numel = checkpoint.validate(sd, str(path))
    rows = inventory.component_rows({k: tuple(v.shape) for k, v in sd.items()})
    return InspectReport(str(path), container, str(meta.get("weights", "")), rows, dead_keys, dead_numel,
                         len(live), sum(t.numel() for t in live.values()))


def load_detector(checkpoint_path: str | Path | None = None) -> tuple["Detector", str]:
    """A Detector with every `detector.*` key loaded strictly; returns (detector, weights label).

    Without a checkpoint it uses the embedded default (deterministic weights, not the trained ones).
    """
    from .model.detector import Detector
    from .weights import LABEL, synthetic_state_dict
    if checkpoint_path is None:
        state, label = synthetic_state_dict("detector."), f"embedded default checkpoint: {LABEL}"
    else:
        ckpt = checkpoint.load_checkpoint(checkpoint_path)
        state = ckpt.with_prefix("detector.")
        label = str(ckpt.meta.get("weights") or f"checkpoint {checkpoint_path}")
    detector = Detector()
    detector.load_state_dict(state, strict=True)
    return detector.eval(), label


@dataclass
class SegmentResult:
    out_dir: str
    weights_label: str
    objects: list[dict]
    seconds: float


def segment(image: str | Path, prompt: str, out: str | Path, checkpoint_path: str | Path | None = None,
            boxes: list[tuple[float, float, float, float]] = (), negative_boxes=(),
            threshold: float = 0.5, max_objects: int | None = None,
            save_intermediates: str | Path | None = None, force: bool = False,
            progress=lambda message: None) -> SegmentResult:
    """`toolkit segment`: masks (PNG per object), overlay PNG and detections.json under `out`."""
    import json
    import time
    from contextlib import ExitStack

    import numpy as np
    from PIL import Image

    from .outputs import fresh_output_dir
    from .pipeline.image import ImageSegmenter, check_prompt
    from .pipeline.intermediates import StageDump
    from .preprocess import load_rgb
    from .visualize import overlay

    if not 0.0 <= threshold < 1.0:
        raise ToolkitError(f"--threshold must be in [0, 1), got {threshold}")
    if max_objects is not None and max_objects < 1:
        raise ToolkitError(f"--max-objects must be at least 1, got {max_objects}")
    rgb = load_rgb(image)
    check_prompt(prompt, list(boxes) + list(negative_boxes), rgb.shape[:2])
    with ExitStack() as stack:
        tmp = stack.enter_context(fresh_output_dir(out, force))
        record = StageDump(stack.enter_context(fresh_output_dir(save_intermediates, force))) \
            if save_intermediates else None
        progress("loading the model")
        detector, label = load_detector(checkpoint_path)
        start = time.perf_counter()
        progress(f"segmenting {image} for {prompt!r}")
        found = ImageSegmenter(detector)(rgb, prompt, list(boxes) + list(negative_boxes),
                                         [True] * len(boxes) + [False] * len(negative_boxes), threshold,
                                         max_objects, record)
        seconds = time.perf_counter() - start
        objects = []
        for i in range(len(found.scores)):
            name = f"mask_{i:03d}.png"
            Image.fromarray(found.masks[i].astype(np.uint8) * 255).save(tmp / name)
            objects.append({"index": i, "query": int(found.query_indices[i]), "score": float(found.scores[i]),
                            "box_xyxy_px": [round(float(v), 3) for v in found.boxes_xyxy_px[i]],
                            "mask": name, "mask_area_px": int(found.masks[i].sum())})
        caption = f"{prompt!r}: {len(objects)} objects (score > {threshold:g})" + (
            "; embedded default weights (untrained)" if checkpoint_path is None else "")
        overlay(rgb, found.masks, found.boxes_xyxy_px, found.scores, caption).save(tmp / "overlay.png")
        (tmp / "detections.json").write_text(json.dumps({
            "image": str(image), "image_size_wh": [rgb.shape[1], rgb.shape[0]], "prompt": prompt,
            "boxes_xyxy_px": [list(b) for b in boxes],
            "negative_boxes_xyxy_px": [list(b) for b in negative_boxes],
            "threshold": threshold, "max_objects": max_objects, "weights": label,
            "seconds": round(seconds, 3), "objects": objects,
        }, indent=2))
    return SegmentResult(str(out), label, objects, seconds)
