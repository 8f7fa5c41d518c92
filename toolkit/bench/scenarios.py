"""End-to-end scenarios, each on the eager PyTorch pipeline and on every requested runner kind.

  image_text        coffee.png (600x400) + "person" -> masks
  image_text_boxes  the same + one box prompt (the golden box)
  tracking          the golden click on frame 0 of an N-frame clip (default 8), propagated through
                    all frames; frame t is coffee.png moved right by 4t and down by 2t pixels
                    (edges repeated), the rule of the golden clip, whose three frames are 0-2

"eager" is the pipeline exactly as `toolkit segment` / `toolkit track` run it (ImageSegmenter on
the loaded Detector, VideoTracker on the tracker modules): the baseline of `ratio_to_eager`,
measured in the same run. A runner kind runs the same pipeline code with the model's stage calls
served by that kind's component runners, through the adapters a bundle runs with
(`toolkit.pipeline.artifacts.RunnerDetector` / `RunnerTracker`): pre-processing, tokenizer, prompt
assembly, memory bank and post-processing are the pipeline's own.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..pipeline.artifacts import DETECTOR_COMPONENTS, TRACKER_COMPONENTS

SCENARIOS = {
    "image_text": "image + text prompt -> masks (coffee.png 600x400, 'person')",
    "image_text_boxes": "image + text + one box -> masks (coffee.png, 'person', box 162,68,438,268)",
    "tracking": "one click on frame 0 of coffee.png moving 4 px right and 2 px down per frame, propagated "
                "through all frames",
}
EAGER = "eager"
PROMPT = "person"
BOX_XYXY = (162.0, 68.0, 438.0, 268.0)  # the golden box prompt, in pixels
_REPO_DOCS = Path(__file__).resolve().parents[2] / "docs"
CLICK_XY = (312.0, 180.0)  # the golden click: relative (0.52, 0.45) of a 600x400 frame


def moving_frame(rgb: np.ndarray, t: int) -> np.ndarray:
    """Frame t of the clip: the image moved right by 4t and down by 2t pixels, edges repeated."""
    h, w = rgb.shape[:2]
    rows = np.clip(np.arange(h) - 2 * t, 0, h - 1)
    cols = np.clip(np.arange(w) - 4 * t, 0, w - 1)
    return rgb[rows][:, cols]


def prepare_inputs(out: str | Path, frames: int = 8) -> Path:
    """image.png and frames/00000.png... made from the golden fixture's image (a device has none;
    without the fixture, the same file as the README's docs/coffee.png)."""
    from PIL import Image

    from ..pipeline.preprocess import load_rgb
    from ..verify.golden import golden_available, golden_path

    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    image = golden_path("inputs", "coffee.png") if golden_available() else _REPO_DOCS / "coffee.png"
    shutil.copyfile(image, out / "image.png")
    rgb = load_rgb(out / "image.png")
    for t in range(frames):
        Image.fromarray(moving_frame(rgb, t)).save(out / "frames" / f"{t:05d}.png")
    return out


def _image_case(segmenter, inputs: Path, boxes: bool) -> Callable[[], dict]:
    from ..pipeline.preprocess import load_rgb

    rgb = load_rgb(inputs / "image.png")

    def run() -> dict:
        found = segmenter(rgb, PROMPT, [BOX_XYXY] if boxes else [], [True] if boxes else None)
        return {"objects": len(found.scores),
                "best_score": round(float(found.scores.max()), 4) if len(found.scores) else None}
    return run


def _tracking_case(tracker, inputs: Path, frames: int) -> Callable[[], dict]:
    from ..pipeline.video import ClickPrompt, open_frames

    source = open_frames(inputs / "frames")
    if len(source) != frames:
        raise ValueError(f"{inputs / 'frames'} has {len(source)} frames, {frames} asked for")
    prompt = ClickPrompt((CLICK_XY,), (1,))

    def run() -> dict:
        session = tracker.prompt(source, 0, prompt)
        results = list(session.propagate())
        present = [bool(r.object_score_logits[0] > 0) for r in results]
        return {"frames": len(results), "objects": len(session.objects), "frames_object_present": sum(present)}
    return run


def _runners(kind_name: str, names: tuple[str, ...], sources) -> tuple[dict | None, str | None]:
    """Runners of `names` on one kind, or why that kind cannot run them all."""
    from ..components.registry import COMPONENTS
    from .backends import RUNNER_KINDS

    kind = RUNNER_KINDS[kind_name]
    reasons = list(dict.fromkeys(r for name in names if (r := kind.unavailable(COMPONENTS[name], sources))))
    if reasons:
        return None, "; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else "")
    return {name: kind.build(COMPONENTS[name], sources) for name in names}, None


def _pipelines(kind_name: str, config, sources) -> tuple[dict[str, Callable[[], dict]], dict[str, str]]:
    """The scenario callables this runner kind can run, and the reason for each it cannot."""
    from ..pipeline.image import ImageSegmenter
    from ..pipeline.video import VideoTracker

    inputs = Path(config.inputs) if config.inputs else None
    cases, skipped = {}, {}
    wanted = config.scenarios
    if inputs is None or not (inputs / "image.png").is_file():
        return {}, {s: "no scenario inputs (image.png, frames/) were prepared" for s in wanted}
    image_wanted = [s for s in wanted if s != "tracking"]
    if image_wanted:
        segmenter = None
        if kind_name == EAGER:
            segmenter = ImageSegmenter(sources.models.detector)
        else:
            runners, reason = _runners(kind_name, DETECTOR_COMPONENTS, sources)
            if runners is None:
                skipped.update(dict.fromkeys(image_wanted, reason))
            else:
                from ..pipeline.artifacts import RunnerDetector
                segmenter = ImageSegmenter(RunnerDetector(runners))
        if segmenter is not None:
            for s in image_wanted:
                cases[s] = _image_case(segmenter, inputs, boxes=s == "image_text_boxes")
    if "tracking" in wanted:
        tracker = None
        if kind_name == EAGER:
            models = sources.models
            tracker = VideoTracker(models.detector.backbone.vision_backbone, models.tracker)
        else:
            runners, reason = _runners(kind_name, TRACKER_COMPONENTS, sources)
            if runners is None:
                skipped["tracking"] = reason
            else:
                from ..pipeline.artifacts import RunnerTracker
                tracker = RunnerTracker(runners)
        if tracker is not None:
            cases["tracking"] = _tracking_case(tracker, inputs, config.tracking_frames)
    return cases, skipped


def _time_case(case: Callable[[], dict], config, progress: Callable[[str], None],
               label: str) -> tuple[list[float], dict]:
    """Timed runs of one scenario (each reported), and what its last run found."""
    from .harness import timed_runs

    details = []

    def run_once() -> None:
        details.append(case())

    def report(i: int, seconds: float) -> None:
        progress(f"scenario {label}: run {i + 1}/{config.scenario_repeats} {seconds:.2f} s")
    seconds = timed_runs(run_once, config.scenario_warmup, config.scenario_repeats, report)
    return seconds, details[-1]


def run_scenarios(config, sources, progress: Callable[[str], None] = lambda message: None) -> list[dict]:
    from .harness import _error, load_1min, summarize

    if not config.scenarios:
        return []
    rows: dict[tuple[str, str], dict] = {}
    for kind_name in [EAGER] + list(config.runners):
        status = "skipped"
        try:
            cases, skipped = _pipelines(kind_name, config, sources)
        except Exception as e:  # noqa: BLE001 - e.g. an artifact that fails to load
            status, cases, skipped = "failed", {}, {s: f"building the pipeline: {_error(e)}" for s in config.scenarios}
        for scenario, reason in skipped.items():
            rows[scenario, kind_name] = {"scenario": scenario, "runner": kind_name, "status": status,
                                         "reason": reason}
            progress(f"scenario {scenario} / {kind_name}: {status} ({reason})")
        for scenario, case in cases.items():
            row = {"scenario": scenario, "runner": kind_name, "status": "ok", "reason": None}
            rows[scenario, kind_name] = row
            progress(f"scenario {scenario} / {kind_name}: {config.scenario_warmup} warm-up + "
                     f"{config.scenario_repeats} timed runs")
            try:
                seconds, detail = _time_case(case, config, progress, f"{scenario} / {kind_name}")
            except Exception as e:  # noqa: BLE001
                row.update(status="failed", reason=_error(e))
                progress(f"scenario {scenario} / {kind_name}: FAILED ({row['reason']})")
                continue
            row["latency_ms"] = summarize(seconds)
            row["load_1min"] = load_1min()
            row["detail"] = detail
            if scenario == "tracking":
                row["detail"]["per_frame_ms"] = round(row["latency_ms"]["p50"] / config.tracking_frames, 1)
    ordered = []
    for scenario in config.scenarios:
        eager = rows.get((scenario, EAGER), {}).get("latency_ms")
        for kind_name in [EAGER] + list(config.runners):
            row = rows[scenario, kind_name]
            row["ratio_to_eager"] = (round(row["latency_ms"]["p50"] / eager["p50"], 4)
                                     if eager and row.get("latency_ms") else None)
            row["description"] = SCENARIOS[scenario]
            ordered.append(row)
    return ordered
