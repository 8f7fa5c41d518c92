"""The two measurements of the accuracy gate, on the evaluation part.

(a) **alone** (`measure_component`): the quantized artifact's outputs against the fp32 reference's,
    both given the same fp32 inputs (the feeds the fp32 pipeline really passes the component on
    the evaluation photos / clip, recorded with `feeds.record_feeds(..., part="evaluation")`).
(b) **end to end** (`measure_detector`, `measure_tracker`): every component at its chosen precision
    together, through the real pipelines (`feeds.run_image_pipeline` / `run_tracker_pipeline`),
    against the fp32 pipelines on the same evaluation samples.

Every function returns flat figures a `Gate` checks (worst value over outputs and samples), plus
the detail.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ..runners import Runner
from .feeds import CANDIDATE_OBJECTS, MAX_OBJECTS, run_image_pipeline, run_tracker_pipeline
from .metrics import MASK_MARGIN, detection_figures, tensor_figures, track_figures, worst


def measure_component(reference: Runner, candidate: Runner, feeds: Iterable[Mapping[str, np.ndarray]],
                      masks: Iterable[str] = (), margin: float = MASK_MARGIN) -> dict:
    """{"figures": worst over outputs and samples (gate input), "outputs": {name: worst over
    samples}, "samples": n}. Feeds are streamed: one sample's outputs in memory at a time."""
    pairs = ((sample, reference.infer(dict(sample))) for sample in feeds)
    return measure_against(pairs, candidate, reference.output_names, masks, margin)


def measure_against(pairs: Iterable[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]], candidate: Runner,
                    output_names: Iterable[str], masks: Iterable[str] = (), margin: float = MASK_MARGIN) -> dict:
    """`measure_component` with the reference's outputs given: (feeds, reference outputs) per sample."""
    masks = set(masks)
    per_output: dict[str, list[dict]] = {}
    n = 0
    for sample, ref in pairs:
        got = candidate.infer(dict(sample))
        for name in output_names:
            per_output.setdefault(name, []).append(tensor_figures(ref[name], got[name], name in masks, margin))
        n += 1
    if not n:
        raise ValueError("no evaluation feeds")
    outputs = {name: worst(figs) for name, figs in per_output.items()}
    return {"figures": worst(outputs.values()), "outputs": outputs, "samples": n}


# The detector's end-to-end figures (per sample; the worst over the samples is gated).
DETECTOR_FIGURES = ("matched_fraction", "max_score_delta", "max_box_delta_px", "mask_iou")


def detector_figures(ref_runs, got_runs, margin: float = MASK_MARGIN) -> tuple[list[dict], dict]:
    """Per evaluation sample, `got`'s detections against the reference's (metrics.detection_figures),
    and the worst sample's figures."""
    per_sample = [{"image": r.image, "prompt": r.prompt, **detection_figures(r.detections, g.detections, margin=margin)}
                  for r, g in zip(ref_runs, got_runs, strict=True)]
    figures = {}
    for key in DETECTOR_FIGURES:
        values = [s[key] for s in per_sample if key in s]
        if values:
            figures[key] = min(values) if key in ("matched_fraction", "mask_iou") else max(values)
    return per_sample, figures


def measure_detector(reference: Mapping[str, Runner], candidate: Mapping[str, Runner], part,
                     samples: int | None = None, max_objects: int = MAX_OBJECTS, margin: float = MASK_MARGIN) -> dict:
    """Detections of the image pipeline with `candidate` runners matched to those with `reference`
    runners, per evaluation sample; figures: the worst sample's (see metrics.detection_figures). The
    candidate keeps every query (feeds.CANDIDATE_OBJECTS)."""
    ref_runs = run_image_pipeline(reference, part, samples=samples, max_objects=max_objects)
    got_runs = run_image_pipeline(candidate, part, samples=samples, max_objects=CANDIDATE_OBJECTS)
    per_sample, figures = detector_figures(ref_runs, got_runs, margin)
    return {"figures": figures, "samples": per_sample}


def measure_tracker(reference: Mapping[str, Runner], candidate: Mapping[str, Runner], part,
                    margin: float = MASK_MARGIN) -> dict:
    """Per-frame mask IoU of the tracked evaluation clip (candidate vs reference runners)."""
    ref = run_tracker_pipeline(reference, part)
    got = run_tracker_pipeline(candidate, part)
    figures = track_figures(ref, got, margin)
    return {"figures": {"track_iou": figures["track_iou"], "sqnr_db": figures["sqnr_db"]}, "detail": figures}
