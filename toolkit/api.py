"""Python API mirroring the CLI: one function per subcommand."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import inventory, layout, loader
from .errors import ToolkitError

if TYPE_CHECKING:  # heavy imports stay lazy: `toolkit inspect` needs no model code
    from .model.detector import Detector
    from .pipeline.video import VideoTracker


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
    sd, container, meta = loader.read_raw(path)
    live, dead_keys, dead_numel = loader.validate(sd, str(path))
    rows = inventory.component_rows({k: tuple(v.shape) for k, v in sd.items()})
    return InspectReport(str(path), container, str(meta.get("weights", "")), rows, dead_keys, dead_numel,
                         len(live), sum(t.numel() for t in live.values()))


def load_detector(checkpoint_path: str | Path | None = None) -> tuple[Detector, str]:
    """A Detector with every `detector.*` key loaded strictly; returns (detector, weights label).

    Without a checkpoint it uses the embedded default (deterministic weights, not the trained ones).
    """
    from .model.detector import Detector
    weights = loader.resolve_weights(checkpoint_path, ("detector.",))
    detector = Detector()
    detector.load_state_dict(weights.under("detector."), strict=True)
    return detector.eval(), weights.label


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
            progress=lambda message: None, loaded: tuple | None = None) -> SegmentResult:
    """`toolkit segment`: masks (PNG per object), overlay PNG and detections.json under `out`.

    `loaded`: an already loaded (detector, weights label), e.g. a bundle's runners (`toolkit run`)."""
    import json
    import time
    from contextlib import ExitStack

    import numpy as np
    from PIL import Image

    from .files.images import read_image
    from .files.outputs import fresh_output_dir, guard_outputs
    from .files.visualize import overlay
    from .pipeline.image import ImageSegmenter, check_prompt
    from .pipeline.intermediates import StageDump

    guard_outputs({"--out": out, "--save-intermediates": save_intermediates},
                  {"--image": image, "--checkpoint": None if loaded else checkpoint_path})
    if not 0.0 <= threshold < 1.0:
        raise ToolkitError(f"--threshold must be in [0, 1), got {threshold}")
    if max_objects is not None and max_objects < 1:
        raise ToolkitError(f"--max-objects must be at least 1, got {max_objects}")
    picture = read_image(image)
    rgb = picture.rgb
    check_prompt(prompt, list(boxes) + list(negative_boxes), rgb.shape[:2])
    with ExitStack() as stack:
        tmp = stack.enter_context(fresh_output_dir(out, force))
        record = StageDump(stack.enter_context(fresh_output_dir(save_intermediates, force, "--save-intermediates"))) \
            if save_intermediates else None
        for note in picture.notes:  # boxes and masks are in pixels of the upright image
            progress(f"{image}: {note}")
        progress("loading the model")
        detector, label = loaded or load_detector(checkpoint_path)
        start = time.perf_counter()
        progress(f"segmenting {image} for {prompt!r}")
        # a bundle's detector carries the bundle's tokenizer (a bundle is self-contained)
        segmenter = detector if getattr(detector, "is_pipeline", False) else ImageSegmenter(  # a bundle's runtime
            detector, getattr(detector, "tokenizer", None))
        found = segmenter(rgb, prompt, list(boxes) + list(negative_boxes),
                          [True] * len(boxes) + [False] * len(negative_boxes), threshold, max_objects, record)
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
            "image": str(image), "image_size_wh": [rgb.shape[1], rgb.shape[0]], "image_notes": picture.notes,
            "prompt": prompt,
            "boxes_xyxy_px": [list(b) for b in boxes],
            "negative_boxes_xyxy_px": [list(b) for b in negative_boxes],
            "threshold": threshold, "max_objects": max_objects, "weights": label,
            "seconds": round(seconds, 3), "objects": objects,
        }, indent=2))
    return SegmentResult(str(out), label, objects, seconds)


def load_video_tracker(checkpoint_path: str | Path | None = None,
                       with_detector: bool = False) -> tuple[VideoTracker, str]:
    """A VideoTracker with every `tracker.*` key and its vision backbone loaded strictly; with
    `with_detector` (text prompts) the whole detector, whose vision backbone the tracker shares.
    Returns (tracker, weights label). Without a checkpoint it uses the embedded default.
    """
    from .model.detector import Detector
    from .model.tracker import TrackerModules
    from .model.vision import VisionBackbone
    from .pipeline.video import VideoTracker
    backbone_prefix = "detector." if with_detector else "detector.backbone.vision_backbone."
    weights = loader.resolve_weights(checkpoint_path, ("tracker.", backbone_prefix))
    tracker_state, backbone_state, label = weights.under("tracker."), weights.under(backbone_prefix), weights.label
    tracker = TrackerModules()
    tracker.load_state_dict(tracker_state, strict=True)
    if with_detector:
        detector = Detector()
        detector.load_state_dict(backbone_state, strict=True)
        return VideoTracker(detector.backbone.vision_backbone, tracker, detector), label
    backbone = VisionBackbone()
    backbone.load_state_dict(backbone_state, strict=True)
    return VideoTracker(backbone, tracker), label


@dataclass
class TrackResult:
    out_dir: str
    weights_label: str
    objects: list[dict]
    num_frames: int
    seconds: float


# Pictures of a tracking run: GIF panels at most this wide, at most this many GIF frames, and
# this many panels (evenly spaced frames) in the strip.
GIF_MAX_FRAMES = 300


def track(frames: str | Path, out: str | Path, checkpoint_path: str | Path | None = None,
          points: list[tuple[float, float]] = (), negative_points: list[tuple[float, float]] = (),
          box: tuple[float, float, float, float] | None = None, text: str | None = None, frame: int = 0,
          threshold: float = 0.5, save_intermediates: str | Path | None = None, force: bool = False,
          progress=lambda message: None, loaded: tuple | None = None) -> TrackResult:
    """`toolkit track`: prompt frame `frame` (clicks / a box: one object; a text: every object the
    detector finds there), follow the objects through all frames, and write under `out` the mask
    PNGs (masks/obj_<id>/<frame>.png), overlay_strip.png, overlay.gif and tracks.json.
    `loaded`: an already loaded (tracker, weights label), e.g. a bundle's runners (`toolkit run`)."""
    import json
    import time
    from contextlib import ExitStack

    import numpy as np
    from PIL import Image

    from .files.outputs import fresh_output_dir, guard_outputs
    from .files.visualize import track_panel, track_strip
    from .pipeline.intermediates import StageDump
    from .pipeline.tokenizer import check_prompt_text
    from .pipeline.video import ClickPrompt, check_frame_index, open_frames

    guard_outputs({"--out": out, "--save-intermediates": save_intermediates},
                  {"--frames": frames, "--checkpoint": None if loaded else checkpoint_path})

    if text is None and not points and box is None:
        raise ToolkitError("no prompt: give --point (optionally with --neg-point), --box or --prompt")
    if text is not None and (points or negative_points or box is not None):
        raise ToolkitError("give either a text --prompt or clicks / a box, not both")
    if text is not None:
        check_prompt_text(text)
    if not 0.0 <= threshold < 1.0:
        raise ToolkitError(f"--threshold must be in [0, 1), got {threshold}")
    source = open_frames(frames)
    check_frame_index(source, frame)
    if text is None:
        prompt = ClickPrompt(tuple(points) + tuple(negative_points),
                             (1,) * len(points) + (0,) * len(negative_points), box)
        prompt.check(source.size_hw)
    else:
        prompt = text
    height, width = source.size_hw
    with ExitStack() as stack:
        tmp = stack.enter_context(fresh_output_dir(out, force))
        record = StageDump(stack.enter_context(fresh_output_dir(save_intermediates, force, "--save-intermediates"))) \
            if save_intermediates else None
        progress("loading the model")
        tracker, label = loaded or load_video_tracker(checkpoint_path, with_detector=text is not None)
        start = time.perf_counter()
        progress(f"prompting frame {frame} of {source.path}")
        session = tracker.prompt(source, frame, prompt, threshold, record)
        ids = [o.id for o in session.objects]
        for oid in ids:
            (tmp / "masks" / f"obj_{oid:02d}").mkdir(parents=True)
        pictured = set(np.linspace(0, len(source) - 1, min(len(source), GIF_MAX_FRAMES)).round().astype(int).tolist())
        panels, per_frame = {}, []
        for done, result in enumerate(session.propagate(), 1):
            t = result.index
            progress(f"frame {t} ({done}/{len(source)})")
            entries = []
            for oid, mask, logit in zip(ids, result.masks, result.object_score_logits):
                name = f"masks/obj_{oid:02d}/{t:05d}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / name)
                entries.append({"id": oid, "score_logit": round(float(logit), 4),
                                "score": round(float(1 / (1 + np.exp(-logit))), 4), "present": bool(logit > 0),
                                "mask": name, "mask_area_px": int(mask.sum())})
            per_frame.append({"index": t, "source": source.names[t], "objects": entries})
            if t in pictured:
                marks = prompt if t == frame and text is None else None
                panels[t] = track_panel(source.rgb(t), result.masks, result.object_score_logits, ids,
                                         f"frame {t}", marks)
        seconds = time.perf_counter() - start
        per_frame.sort(key=lambda f: f["index"])
        caption = (f"{len(ids)} object(s), prompt on frame {frame}"
                   + ("; embedded default weights (untrained)" if checkpoint_path is None else ""))
        track_strip([panels[t] for t in sorted(panels)], caption).save(tmp / "overlay_strip.png")
        gif = [panels[t] for t in sorted(panels)]
        duration = round(1000 / source.fps) if source.fps else 250
        gif[0].save(tmp / "overlay.gif", save_all=True, append_images=gif[1:], duration=duration, loop=0)
        objects = [{"id": o.id, "detection_score": o.detection_score,
                    "box_xyxy_px": None if o.box_xyxy_px is None else [round(v, 3) for v in o.box_xyxy_px]}
                   for o in session.objects]
        (tmp / "tracks.json").write_text(json.dumps({
            "frames": str(frames), "num_frames": len(source), "frame_size_wh": [width, height],
            "prompt": {"frame": frame, "points_px": [list(p) for p in points],
                       "negative_points_px": [list(p) for p in negative_points],
                       "box_xyxy_px": list(box) if box is not None else None, "text": text,
                       "threshold": threshold if text is not None else None},
            "weights": label, "seconds": round(seconds, 3),
            "seconds_per_frame": round(seconds / len(source), 3), "objects": objects, "per_frame": per_frame,
        }, indent=2))
    return TrackResult(str(out), label, objects, len(source), seconds)


def export(out: str | Path, checkpoint_path: str | Path | None = None, components: list[str] | None = None,
           formats: list[str] = ("onnx", "ptl"), force: bool = False, progress=lambda message: None):
    """`toolkit export`: components to ONNX / TorchScript lite under `out`, each verified; returns the
    `toolkit.deploy.export.ExportReport` (also written to `out/export_report.json`)."""
    from .deploy.export import check_out, check_selection, run_export
    from .files.outputs import guard_outputs
    guard_outputs({"--out": out}, {"--checkpoint": checkpoint_path})
    components = check_selection(components, formats)
    check_out(out, components, formats)  # before the weights load
    progress("loading the weights")
    weights = loader.resolve_weights(checkpoint_path)
    return run_export(out, weights.state, weights.label, components, formats, force, progress)


@dataclass
class BenchResult:
    out_dir: str
    results: dict  # the `toolkit.bench/1` document (also out_dir/results.json)
    files: list[str]


def bench(out: str | Path, checkpoint_path: str | Path | None = None, artifacts: str | Path | None = None,
          device: str = "local", components: list[str] | None = None, runners: list[str] | None = None,
          scenarios: list[str] | None = None, threads: int | None = None, repeats: int | None = None,
          quick: bool = False, force: bool = False, progress=lambda message: None,
          bundles: list[str | Path] | None = None) -> BenchResult:
    """`toolkit bench`: latency percentiles, peak memory, FLOPs per component x runner, and the end-to-end
    scenarios, on `device`; writes results.json, results.md and PNG plots under `out`.

    `bundles` (`--bundle`): time each bundle's artifacts per component (interleaved with the reference
    runners, by default `torch` and `onnx`: the fp32 export in `artifacts`), run the scenarios from each
    bundle with the torch-free runtime beside the eager pipeline, and measure each bundle's size and the
    whole runs' peak memory in fresh processes (`toolkit.bench.bundles`); local only."""
    from .bench import BenchConfig, run_bench
    from .bench import report as bench_report
    from .bench.backends import RUNNER_ALIASES, RUNNER_KINDS
    from .bench.scenarios import SCENARIOS
    from .components.registry import COMPONENTS
    from .files.outputs import fresh_output_dir, guard_outputs

    bundles = [str(b) for b in bundles or []]
    guard_outputs({"--out": out}, {"--checkpoint": checkpoint_path, "--artifacts": artifacts,
                                   **{"--bundle" + (f" #{i + 1}" if i else ""): b for i, b in enumerate(bundles)}})
    components = list(COMPONENTS) if components is None else list(components)
    if bundles and runners is None:
        runners = ["torch", "onnx"]  # the fp32 references of a bundle: eager and the fp32 export
    if runners is not None:
        for name in runners:
            if name in RUNNER_ALIASES:
                progress(f"runner {name!r} is now called {RUNNER_ALIASES[name]!r} (one name per format everywhere)")
        runners = [RUNNER_ALIASES.get(name, name) for name in runners]
    runners = list(RUNNER_KINDS) if runners is None else runners
    scenarios = list(SCENARIOS) if scenarios is None else list(scenarios)
    for what, names, known in (("components", components, COMPONENTS), ("runners", runners, RUNNER_KINDS),
                               ("scenarios", scenarios, SCENARIOS)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ToolkitError(f"unknown {what} {unknown}; known: {', '.join(known)}")
    if threads is not None and threads < 1:
        raise ToolkitError(f"--threads must be at least 1, got {threads}")
    if repeats is not None and repeats < 1:
        raise ToolkitError(f"--repeats must be at least 1, got {repeats}")
    if artifacts is not None and not Path(artifacts).is_dir():
        raise ToolkitError(f"--artifacts {artifacts} is not a directory")
    if checkpoint_path is not None:
        loader.load_checkpoint(checkpoint_path)  # fail here, not on the device
    if bundles:
        from .bench.bundles import check_request
        check_request(bundles, device)  # a path that is not a bundle: one line before anything runs
    config = BenchConfig(components, runners, scenarios, threads=threads, quick=quick,
                         checkpoint=str(checkpoint_path) if checkpoint_path else None,
                         artifacts=str(Path(artifacts).resolve()) if artifacts else None,
                         bundles=[str(Path(b).resolve()) for b in bundles])
    if repeats is not None:
        config.repeats = repeats
    with fresh_output_dir(out, force) as tmp:
        results = run_bench(config, device, progress)
        files = bench_report.write(results, tmp)
    return BenchResult(str(out), results, [str(Path(out) / f.name) for f in files])


# --- targets and bundles (`toolkit targets`, `build`, `verify`, `run`) --------------------------------

def list_targets() -> list:
    """Every target file found (see `toolkit.deploy.targets`), loaded and validated."""
    from .deploy.targets import available, load_target
    return [load_target(path) for path in available().values()]


def build(target: str, out: str | Path, checkpoint_path: str | Path | None = None, concepts: str | Path | None = None,
          components: list[str] | None = None, cache_dir: str | Path | None = None, force: bool = False,
          archive: bool = False, precision: str | None = None, calibration: str | Path | None = None,
          progress=lambda message: None):
    """`toolkit build`: the bundle of `target` (a name or a .toml path) under `out`; returns the
    `toolkit.deploy.build.BuildReport`. Without a checkpoint it uses the embedded default and says so.
    `precision` overrides the target file's (`--precision`); `calibration`: the calibration set
    directory of the quantized precisions (default: the shipped `calibration/`)."""
    from .deploy.build import read_concepts, run_build
    from .deploy.targets import find_target
    from .files.outputs import guard_outputs
    # the export cache is read as well as written: the bundle folder may not hold it either
    guard_outputs({"--out": out}, {"--checkpoint": checkpoint_path, "--concepts": concepts, "--cache": cache_dir,
                                   "--target": target if Path(target).is_file() else None,
                                   "--calibration": calibration})
    spec = find_target(target, progress)
    if precision is not None:
        spec = spec.with_precision(precision, progress)
    if calibration is not None and spec.quantized():
        from .quantize import CalibrationSet
        CalibrationSet.load(calibration)  # a bad set is one line before any model is built
    concept_list = read_concepts(concepts) if concepts else None
    if checkpoint_path is None:
        progress("no --checkpoint: using the embedded default checkpoint (deterministic weights, NOT trained)")
    weights = loader.resolve_weights(checkpoint_path)
    return run_build(spec, out, weights.state, weights.label, weights.embedded_default, str(checkpoint_path) if checkpoint_path else None,
                     concept_list, components, cache_dir, force, archive, calibration_dir=calibration,
                     progress=progress)


def calibrate(out: str | Path, checkpoint_path: str | Path | None = None, calibration: str | Path | None = None,
              components: list[str] | None = None, samples: int | None = None, evaluation: bool = False,
              force: bool = False, progress=lambda message: None):
    """`toolkit calibrate`: the feeds every component receives from the fp32 pipelines over the
    calibration part (and the evaluation part with `evaluation`) of `calibration` (default: the shipped
    set), written to `out` as `<part>/<component>/NNNN.npz` with calibration.json / calibration.md
    (per-input statistics); returns `toolkit.quantize.record.CalibrateResult`."""
    from .components.registry import COMPONENTS
    from .files.outputs import fresh_output_dir, guard_outputs
    from .quantize import CalibrationSet
    from .quantize.record import PARTS, record_calibration
    from .verify.compare import Reference
    guard_outputs({"--out": out}, {"--checkpoint": checkpoint_path, "--calibration": calibration})
    names = list(COMPONENTS) if components is None else list(components)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise ToolkitError(f"unknown components {unknown}; known: {', '.join(COMPONENTS)}")
    if samples is not None and samples < 1:
        raise ToolkitError(f"--samples must be at least 1, got {samples}")
    CalibrationSet.load(calibration)  # a bad set is one line before any model is built
    if checkpoint_path is None:
        progress("no --checkpoint: using the embedded default checkpoint (deterministic weights, NOT trained)")
    weights = loader.resolve_weights(checkpoint_path)
    reference = Reference(weights.state, False, progress, names)
    with fresh_output_dir(out, force) as tmp:
        result = record_calibration(reference.graphs, names, tmp, calibration, samples,
                                    PARTS if evaluation else PARTS[:1], progress)
    result.out = str(out)
    result.files = [str(Path(out) / Path(f).name) for f in result.files]
    return result


def quantize_report(bundle: str | Path, out: str | Path, op_types: str = "worst",
                    checkpoint_path: str | Path | None = None, calibration: str | Path | None = None,
                    cache_dir: str | Path | None = None, force: bool = False, progress=lambda message: None):
    """`toolkit quantize-report`: report.md and sensitivity.png of a quantized bundle under `out` (every
    precision each component's ladder tried, from the manifest; per operator type for `op_types`: a
    component, "worst" or "none"). Returns (ladders, per-operator-type rows, files)."""
    from .files.outputs import fresh_output_dir, guard_outputs
    from .quantize.bundle_report import quantize_report as write
    guard_outputs({"--out": out}, {"bundle": bundle, "--checkpoint": checkpoint_path, "--calibration": calibration,
                                   "--cache": cache_dir})
    with fresh_output_dir(out, force) as tmp:
        ladders, rows, files = write(bundle, tmp, op_types, checkpoint_path, calibration, cache_dir, progress)
    return ladders, rows, [str(Path(out) / f.name) for f in files]


def verify(bundle: str | Path, checkpoint_path: str | Path | None = None, parity: bool = True,
           components: list[str] | None = None, calibration: str | Path | None = None,
           progress=lambda message: None):
    """`toolkit verify`: schema, checksums and parity of a bundle directory or archive; returns the
    `toolkit.verify.bundle.VerifyReport` (a bad schema or file raises a one-line ToolkitError)."""
    from .verify.bundle import verify_bundle
    return verify_bundle(bundle, checkpoint_path, parity, components, progress=progress, calibration=calibration)


def run_bundle(bundle: str | Path, out: str | Path, image: str | Path | None = None, prompt: str | None = None,
               frames: str | Path | None = None, boxes=(), negative_boxes=(), points=(), negative_points=(),
               frame: int = 0, threshold: float = 0.5, max_objects: int | None = None,
               save_intermediates: str | Path | None = None, force: bool = False, threads: int | None = None,
               progress=lambda message: None):
    """`toolkit run`: `toolkit segment` (with --image) or `toolkit track` (with --frames) from a bundle
    alone: the same pipeline code, the bundle's artifacts as runners (checksums checked first)."""
    from .runtime import RuntimeInputError
    try:
        return _run_bundle(bundle, out, image, prompt, frames, boxes, negative_boxes, points, negative_points, frame,
                           threshold, max_objects, save_intermediates, force, threads, progress)
    except RuntimeInputError as e:  # the torch-free runtime's own one-line errors
        raise ToolkitError(str(e)) from e


def _run_bundle(bundle, out, image, prompt, frames, boxes, negative_boxes, points, negative_points, frame, threshold,
                max_objects, save_intermediates, force, threads, progress):
    from .deploy.bundle import open_bundle
    from .files.outputs import guard_outputs
    from .runtime import Bundle, Segmenter, Tracker
    if (image is None) == (frames is None):
        raise ToolkitError("give --image (segmentation) or --frames (tracking)")
    guard_outputs({"--out": out, "--save-intermediates": save_intermediates},
                  {"BUNDLE": bundle, "--image": image, "--frames": frames})
    progress(f"opening bundle {bundle} (schema and checksums)")
    opened = open_bundle(bundle)
    model = opened.manifest["model"]
    label = f"bundle {bundle} (target {opened.target}): {model['weights']}"
    built_from = None if model["embedded_default"] else model.get("checkpoint") or "checkpoint"
    if image is not None:
        if prompt is None:
            raise ToolkitError("--image needs --prompt")
        if points or negative_points:
            raise ToolkitError("--point / --neg-point go with --frames")
        # the torch-free runtime (toolkit/runtime) over the bundle opened and checked above
        detector = Segmenter(Bundle(opened.root, opened.manifest), threads)
        result = segment(image, prompt, out, built_from, boxes, negative_boxes, threshold, max_objects,
                         save_intermediates, force, progress, loaded=(detector, label))
        if detector.prompt_cache is not None and detector.prompt_cache.hits:
            progress(f"{prompt!r} came from the bundle's prompt cache: the text encoder did not run")
        return result
    if prompt is not None:
        raise ToolkitError("tracking from a bundle takes --point / --box prompts: text prompts need the "
                           "mask-prompt path, which no component exports")
    if len(boxes) > 1 or negative_boxes:
        raise ToolkitError("tracking takes one --box")
    return track(frames, out, built_from, points, negative_points, boxes[0] if boxes else None, None, frame,
                 threshold, save_intermediates, force, progress,
                 loaded=(Tracker(Bundle(opened.root, opened.manifest), threads), label))
