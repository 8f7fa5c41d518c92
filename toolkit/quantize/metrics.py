"""Accuracy figures of a quantized artifact against its fp32 source.

Why these metrics (they must mean something on the embedded default weights as on trained ones):

- The default weights are deterministic, not trained. Their activations are not the trained
  model's, and their masks are noise-like: a large share of mask logits sits near the 0
  threshold, where any rounding (another CPU, fp16, int8) flips pixels. Plain mask IoU there
  measures how many logits are near 0, not how good the quantization is.
- **SQNR** (signal-to-quantization-noise ratio, dB: 10 log10(sum ref^2 / sum (got - ref)^2)) is
  scale-free and does not depend on a threshold: it reads the same on noise-like and on trained
  tensors. 20 dB = the error carries 1 % of the signal's energy; int8 is typically 25-40 dB per layer.
- **Cosine similarity** catches a direction change that SQNR averages away on large tensors.
- **Max abs error** (and relative to max|ref|) catches a single bad channel or saturated outlier.
- **Margin-aware mask IoU**: the IoU of (got > 0) and (ref > 0) over the pixels whose fp32 logit is
  farther than `margin` from 0 (toolkit.verify.compare.mask_agreement, the export verification's rule). The
  margin is fixed in advance in logit units and not derived from the candidate's error: a pixel
  whose fp32 probability lies within sigmoid(+-margin) of 0.5 is undecided in the fp32 model
  itself, so its flip is no regression; the share of such pixels and their flips are reported apart
  (`uncertain_fraction`, `flips_near_threshold`), so an IoU over few pixels is visible as such.
- **Detections**: post-processed detections of the quantized pipeline are matched to the fp32
  ones greedily by box IoU (highest fp32 score first, the best unmatched candidate with IoU >=
  `min_iou`); figures: matched share of the fp32 detections, score and box deltas of matched
  pairs, margin-aware mask IoU of matched pairs. Matching, not query index, because a deployment
  is judged by what it reports; the fraction of fp32 detections lost is the headline figure.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

MASK_MARGIN = 0.5  # logits: fp32 probability within 0.378..0.622 counts as undecided
INF_DB = 300.0  # SQNR of an exact match (JSON has no infinity)


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """10 log10(signal energy / error energy); INF_DB for an exact match, -INF_DB-like values for a
    zero reference with an error."""
    ref, got = _f64(ref), _f64(got)
    noise = float(np.sum((got - ref) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return INF_DB
    if signal == 0.0:
        return -INF_DB
    return float(min(INF_DB, 10.0 * np.log10(signal / noise)))


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = _f64(ref).ravel(), _f64(got).ravel()
    norms = float(np.linalg.norm(ref) * np.linalg.norm(got))
    if norms == 0.0:
        return 1.0 if not ref.any() and not got.any() else 0.0
    return float(np.dot(ref, got) / norms)


def mask_iou(ref_logits: np.ndarray, got_logits: np.ndarray, margin: float = MASK_MARGIN) -> dict:
    """Margin-aware mask IoU (see the module docstring) with the share of undecided pixels."""
    from ..verify.compare import mask_agreement
    ref, got = _f64(ref_logits), _f64(got_logits)
    iou, flips = mask_agreement(ref, got, margin)
    uncertain = int((np.abs(ref) <= margin).sum())
    return {"mask_iou": iou, "flips_near_threshold": flips,
            "uncertain_fraction": uncertain / ref.size if ref.size else 0.0}


def tensor_figures(ref: np.ndarray, got: np.ndarray, mask_logits: bool = False,
                   margin: float = MASK_MARGIN) -> dict:
    """SQNR, cosine, max abs and relative error (and, for mask logits, the margin-aware IoU) of one
    tensor. Bool / integer tensors: the share of differing values as `mismatch`."""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        raise ValueError(f"shape {got.shape} against the reference's {ref.shape}")
    if ref.dtype == bool or np.issubdtype(ref.dtype, np.integer):
        return {"mismatch": float((ref != got).mean()) if ref.size else 0.0}
    diff = np.abs(_f64(got) - _f64(ref))
    scale = float(np.abs(_f64(ref)).max()) if ref.size else 0.0
    max_abs = float(diff.max()) if ref.size else 0.0
    out = {"sqnr_db": sqnr_db(ref, got), "cosine": cosine(ref, got), "max_abs": max_abs,
           "max_rel": max_abs / scale if scale > 0 else max_abs}
    if mask_logits:
        out.update(mask_iou(ref, got, margin))
    return out


@dataclass
class _Worst:
    """Figures aggregated over tensors and samples by their worst value."""

    sqnr_db: float | None = None
    cosine: float | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    mask_iou: float | None = None
    flips_near_threshold: int = 0
    uncertain_fraction: float | None = None
    mismatch: float | None = None


_LOWER_IS_WORSE = ("sqnr_db", "cosine", "mask_iou")
_HIGHER_IS_WORSE = ("max_abs", "max_rel", "mismatch", "uncertain_fraction")


def worst(figures: Iterable[Mapping]) -> dict:
    """The worst of each figure over several tensors / samples (minimum SQNR, cosine and IoU; maximum
    errors), flips summed. Figures absent everywhere are left out."""
    acc = _Worst()
    for f in figures:
        for key in _LOWER_IS_WORSE:
            if f.get(key) is not None:
                current = getattr(acc, key)
                setattr(acc, key, f[key] if current is None else min(current, f[key]))
        for key in _HIGHER_IS_WORSE:
            if f.get(key) is not None:
                current = getattr(acc, key)
                setattr(acc, key, f[key] if current is None else max(current, f[key]))
        acc.flips_near_threshold += int(f.get("flips_near_threshold", 0))
    out = {k: v for k, v in asdict(acc).items() if v is not None}
    if "mask_iou" not in out:
        out.pop("flips_near_threshold", None)
    return out


def outputs_figures(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                    masks: Iterable[str] = (), margin: float = MASK_MARGIN) -> dict[str, dict]:
    """`tensor_figures` per output name (mask-logit outputs named in `masks`)."""
    masks = set(masks)
    return {name: tensor_figures(ref[name], got[name], name in masks, margin) for name in ref}


# --- detections -----------------------------------------------------------------------------------

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N,4) and (M,4) x0,y0,x1,y1 boxes."""
    a, b = _f64(a).reshape(-1, 4), _f64(b).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda t: np.clip(t[:, 2] - t[:, 0], 0, None) * np.clip(t[:, 3] - t[:, 1], 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_detections(ref_queries: np.ndarray, ref_boxes: np.ndarray, got_queries: np.ndarray,
                     got_boxes: np.ndarray, min_iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Pairs of the same query (the detector's 200 queries are slots: quantization changes what a slot
    outputs, not which slot is which), kept when their boxes overlap by >= min_iou. Pairing by rank
    or by greedy box overlap would measure the ranking of near-tied scores instead. Returns
    (ref index, got index, IoU) per matched pair."""
    where = {int(q): j for j, q in enumerate(np.asarray(got_queries).ravel())}
    pairs = []
    for i, q in enumerate(np.asarray(ref_queries).ravel()):
        j = where.get(int(q))
        if j is not None:
            iou = float(box_iou(ref_boxes[i], got_boxes[j])[0, 0])
            if iou >= min_iou:
                pairs.append((i, j, iou))
    return pairs


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(_f64(p), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def detection_figures(ref, got, min_iou: float = 0.5, margin: float = MASK_MARGIN) -> dict:
    """Figures of one image's detections (`toolkit.pipeline.image.Detections` or anything with
    query_indices, boxes_xyxy_px, scores, mask_probs): the share of the reference's detections found
    in `got` (same query, boxes overlapping; `got` should keep every query, see
    feeds.CANDIDATE_OBJECTS), score / box deltas (pixels) and margin-aware mask IoU (on the
    probabilities turned back into logits) of the matched pairs."""
    pairs = match_detections(ref.query_indices, ref.boxes_xyxy_px, got.query_indices, got.boxes_xyxy_px, min_iou)
    n_ref = len(ref.scores)
    out = {"detections": n_ref, "candidate_detections": len(got.scores), "matched": len(pairs),
           "matched_fraction": len(pairs) / n_ref if n_ref else 1.0}
    if pairs:
        score = [abs(float(got.scores[j]) - float(ref.scores[i])) for i, j, _ in pairs]
        box = [float(np.abs(_f64(got.boxes_xyxy_px[j]) - _f64(ref.boxes_xyxy_px[i])).max()) for i, j, _ in pairs]
        masks = [mask_iou(_logit(ref.mask_probs[i]), _logit(got.mask_probs[j]), margin) for i, j, _ in pairs]
        out.update({"max_score_delta": max(score), "mean_score_delta": float(np.mean(score)),
                    "max_box_delta_px": max(box), "min_box_iou": min(p[2] for p in pairs),
                    "mask_iou": min(m["mask_iou"] for m in masks),
                    "flips_near_threshold": sum(m["flips_near_threshold"] for m in masks),
                    "uncertain_fraction": max(m["uncertain_fraction"] for m in masks)})
    return out


def track_figures(ref_logits: Iterable[np.ndarray], got_logits: Iterable[np.ndarray],
                  margin: float = MASK_MARGIN) -> dict:
    """Per-frame margin-aware mask IoU of a tracked clip (low-res mask logits per frame), with the
    worst frame, the mean, and the SQNR of the logits over the clip."""
    ref_logits, got_logits = list(ref_logits), list(got_logits)
    frames = [mask_iou(r, g, margin) for r, g in zip(ref_logits, got_logits, strict=True)]
    ref_all = np.concatenate([_f64(r).ravel() for r in ref_logits]) if frames else np.zeros(0)
    got_all = np.concatenate([_f64(g).ravel() for g in got_logits]) if frames else np.zeros(0)
    ious = [f["mask_iou"] for f in frames]
    return {"frames": len(frames), "track_iou_per_frame": ious, "track_iou": min(ious) if ious else 1.0,
            "track_iou_mean": float(np.mean(ious)) if ious else 1.0,
            "flips_near_threshold": sum(f["flips_near_threshold"] for f in frames),
            "sqnr_db": sqnr_db(ref_all, got_all)}
