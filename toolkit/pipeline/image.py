"""Image path: RGB image + text (+ boxes) -> detections at the original resolution.

The same code drives the PyTorch reference and component runners (`toolkit.bundle_runtime`): it only
calls the detector's stage methods (`toolkit.pipeline.stages.DetectorStages`) and the numpy
post-processing an app would reproduce.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ToolkitError
from ..model.detector import detections
from ..model.recording import Recorder
from ..preprocess import preprocess_image
from ..tokenizer import Tokenizer, check_prompt_text
from .stages import DetectorStages


@dataclass
class Detections:
    """Kept objects of one image, in query order."""

    boxes_xyxy_px: np.ndarray  # (N, 4) float32, original-image pixels
    scores: np.ndarray         # (N,) float32
    masks: np.ndarray          # (N, H, W) bool at the original resolution
    mask_probs: np.ndarray     # (N, H, W) float32
    query_indices: np.ndarray  # (N,) int64: which of the 200 queries each object is


def check_prompt(prompt: str, boxes_xyxy, image_hw: tuple[int, int]) -> None:
    """Reject an empty or too long text prompt and boxes that are empty or leave the image."""
    check_prompt_text(prompt)
    height, width = image_hw
    for x0, y0, x1, y1 in boxes_xyxy:
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ToolkitError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is not a non-empty box inside the "
                               f"{width}x{height} image (x0,y0,x1,y1 in pixels)")


def boxes_px_to_prompt(boxes_xyxy: list[tuple[float, float, float, float]], image_hw: tuple[int, int],
                       positive: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel x0,y0,x1,y1 boxes -> the detector's (N,1,4) normalised cx,cy,w,h and (N,1) labels."""
    height, width = image_hw
    rows = []
    for x0, y0, x1, y1 in boxes_xyxy:
        rows.append([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height])
    boxes = torch.tensor(rows, dtype=torch.float32).reshape(-1, 1, 4)
    labels = torch.tensor(positive, dtype=torch.bool).reshape(-1, 1)
    return boxes, labels


class ImageSegmenter:
    """Promptable concept segmentation of one image with a loaded Detector (or a stand-in)."""

    def __init__(self, detector: DetectorStages, tokenizer: Tokenizer | None = None):
        self.detector = detector.eval()
        self.tokenizer = tokenizer or Tokenizer()

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray, prompt: str, boxes_xyxy_px=(), box_positive=None,
                 threshold: float = 0.5, max_objects: int | None = None,
                 record: Recorder | None = None) -> Detections:
        """Detections with score > threshold in query order; with `max_objects`, only the best ones."""
        image_hw = rgb.shape[:2]
        check_prompt(prompt, boxes_xyxy_px, image_hw)
        boxes = labels = None
        if len(boxes_xyxy_px):
            positive = list(box_positive) if box_positive is not None else [True] * len(boxes_xyxy_px)
            boxes, labels = boxes_px_to_prompt(list(boxes_xyxy_px), image_hw, positive)
        features = self.detector.encode_image(preprocess_image(rgb), record)
        text = self.detector.encode_text(self.tokenizer(prompt), record)
        outputs = self.detector.forward_grounding(features, text, boxes, labels, record)
        found = detections(outputs, image_hw, threshold, record)
        keep = np.arange(len(found["scores"]))
        if max_objects is not None and len(keep) > max_objects:
            keep = np.sort(np.argsort(-found["scores"], kind="stable")[:max_objects])
        return Detections(
            boxes_xyxy_px=found["boxes_xyxy_px"][keep], scores=found["scores"][keep],
            masks=found["masks"][keep, 0], mask_probs=found["mask_probs"][keep, 0],
            query_indices=found["query_indices"][keep],
        )
