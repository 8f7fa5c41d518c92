"""Image path: RGB image + text (+ boxes) -> detections at the original resolution.

The same code drives the PyTorch reference and component runners (`toolkit.pipeline.artifacts`): it only
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
from ..runtime.errors import RuntimeInputError
from ..runtime.image import boxes_to_prompt, check_boxes
from .preprocess import preprocess_image
from .stages import DetectorStages
from .tokenizer import Tokenizer, check_prompt_text


@dataclass
class Detections:
    """Kept objects of one image, in query order."""

    boxes_xyxy_px: np.ndarray  # (N, 4) float32, original-image pixels
    scores: np.ndarray         # (N,) float32
    masks: np.ndarray          # (N, H, W) bool at the original resolution
    mask_probs: np.ndarray     # (N, H, W) float32
    query_indices: np.ndarray  # (N,) int64: which of the 200 queries each object is


def check_prompt(prompt: str, boxes_xyxy, image_hw: tuple[int, int]) -> None:
    """Reject an empty or too long text prompt and boxes that are empty or leave the image (the
    runtime's box check: one definition, the runtime imports no torch)."""
    check_prompt_text(prompt)
    try:
        check_boxes(boxes_xyxy, image_hw)
    except RuntimeInputError as e:
        raise ToolkitError(str(e)) from e


def boxes_px_to_prompt(boxes_xyxy: list[tuple[float, float, float, float]], image_hw: tuple[int, int],
                       positive: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel x0,y0,x1,y1 boxes -> the detector's (N,1,4) normalised cx,cy,w,h and (N,1) labels (the runtime's)."""
    boxes, labels = boxes_to_prompt(boxes_xyxy, positive, image_hw)
    return torch.from_numpy(boxes), torch.from_numpy(labels)


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
