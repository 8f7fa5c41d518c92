"""Detector outputs -> detections in original-image pixels (numpy only).

This is the post-processing an application runs after the exported model, so it needs neither
torch nor the model. It follows upstream ``Sam3Processor._forward_grounding``:

- score = sigmoid(pred_logits) * sigmoid(presence_logit): how well the query matches the prompt,
  times how likely the prompted concept is present in the image at all;
- queries with score > threshold are kept, in query order;
- boxes: normalised cx,cy,w,h -> x0,y0,x1,y1 in pixels of the original image;
- masks: logits resized bilinearly (half-pixel centres, i.e. torch ``align_corners=False``) to the
  original height x width, then sigmoid; a pixel belongs to the mask when its probability > 0.5.
"""

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _sigmoid_inplace(x: np.ndarray) -> np.ndarray:
    """sigmoid(x) written into x (mask-sized arrays: avoids three full-size temporaries)."""
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1
    return np.reciprocal(x, out=x)


def box_cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear resampling with half-pixel centres.

    Rounded like torch's CPU kernel, so that the weights agree to the last bit: the scale is a
    float32, and the source position scale * (i + 0.5) - 0.5 is rounded to float32 once (a fused
    multiply-add; float64 holds the product exactly).
    """
    scale = float(np.float32(in_size / out_size))
    src = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    lo = np.minimum(src.astype(np.int64), in_size - 1)  # src >= 0: truncation is floor
    hi = np.minimum(lo + 1, in_size - 1)
    w_hi = src - lo.astype(np.float32)
    return lo, hi, np.float32(1) - w_hi, w_hi


def resize_bilinear(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes, as torch ``interpolate`` (bilinear, align_corners=False)."""
    x = np.asarray(x, dtype=np.float32)
    h_lo, h_hi, wh_lo, wh_hi = _linear_taps(x.shape[-2], out_hw[0])
    w_lo, w_hi, ww_lo, ww_hi = _linear_taps(x.shape[-1], out_hw[1])
    # Width first on the small input, then height: the same weighted sums as torch. np.take and
    # in-place products keep the full-size temporaries few (fancy indexing is several times slower).
    cols = _weighted_sum(np.take(x, w_lo, axis=-1), ww_lo, np.take(x, w_hi, axis=-1), ww_hi)
    return _weighted_sum(
        np.take(cols, h_lo, axis=-2), wh_lo[:, None], np.take(cols, h_hi, axis=-2), wh_hi[:, None]
    )


def _weighted_sum(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """a * wa + b * wb, computed in the buffers of a and b."""
    a *= wa
    b *= wb
    a += b
    return a


def postprocess_grounding(
    pred_logits: np.ndarray,
    pred_boxes: np.ndarray,
    pred_masks: np.ndarray,
    presence_logit: np.ndarray,
    image_hw: tuple[int, int],
    score_threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """Detections of one image.

    pred_logits (1, Q, 1), pred_boxes (1, Q, 4) normalised cx,cy,w,h, pred_masks (1, Q, h, w)
    logits, presence_logit (1, 1); image_hw = original (H, W).
    Returns boxes_xyxy_px (N, 4), scores (N,), mask_probs (N, 1, H, W) float32,
    masks (N, 1, H, W) bool and query_indices (N,) for the N queries whose score exceeds
    score_threshold, in query order.
    """
    pred_logits, pred_boxes, pred_masks, presence_logit = (
        np.asarray(a, dtype=np.float32) for a in (pred_logits, pred_boxes, pred_masks, presence_logit)
    )
    scores = (sigmoid(pred_logits[0, :, 0]) * sigmoid(presence_logit[0, 0])).astype(np.float32)
    keep = scores > score_threshold
    height, width = image_hw
    scale = np.array([width, height, width, height], dtype=np.float32)
    boxes = box_cxcywh_to_xyxy(pred_boxes[0, keep]) * scale
    mask_probs = _sigmoid_inplace(resize_bilinear(pred_masks[0, keep], (height, width)))[:, None]
    return {
        "boxes_xyxy_px": boxes.astype(np.float32),
        "scores": scores[keep],
        "mask_probs": mask_probs,
        "masks": mask_probs > 0.5,
        "query_indices": np.flatnonzero(keep),
    }
