"""Quantization and calibration: int8 / fp16 artifacts under a measured accuracy gate.

The package works on files and modules; the build decides what to quantize (target files) and
where results go (bundle manifest). Its API, by step:

**Calibration data** (`calibration`)
    `CalibrationSet.load(dir=None)` -> the shipped `calibration/` or a user's `--calibration DIR`
    (images/, optional prompts.txt, optional frames/), split into `.calibration` / `.evaluation`
    `Part`s (images, prompts, clip frames, tracker prompt; `Part.samples(limit)`). One-line
    ToolkitError on bad input. `CalibrationSet.digest(settings_dict)` -> sha256 hex of every file's
    content, the split and the settings: put it in the export cache key of quantized artifacts.

**Settings and gate** (`gate`)
    `QuantSettings.from_dict(target["quantization"])` (method, per_channel, activation type and
    symmetry, keep_float, samples, block_size, mask_margin, mixed_headroom_db, `.gate`, per-component
    overrides via `.for_component(name)`; `.to_dict()` for the digest and the manifest).
    `Gate.from_dict(...)`, `Gate.check(figures) -> [reasons]`.
    `PRECISIONS`, `LADDERS[format]` (next rung per precision), `FORMAT_PRECISIONS`,
    `ladder(format, requested) -> [rungs]`.
    `choose_precision(component, format, requested, attempt, gate) -> LadderResult` where
    `attempt(precision) -> (artifact, figures)` quantizes and measures; the result has `.chosen`,
    `.rungs` (figures and failures of every rung tried), `.steps` (one line per step down, with the
    reason), `.artifact`, `.to_dict()` for the manifest.
    `settle_end_to_end(chosen, formats, sensitivity, measure, gate) -> (precisions, history)`: steps
    the most sensitive component down until the end-to-end figures pass.

**Calibration feeds** (`feeds`)
    `FeedRecorder(FeedStore(dir), limit)` is the walker hook `recorder(component, feeds)`: streams
    each distinct call's feeds to `dir/<component>/NNNN.npz` (at most `limit` per component;
    memory holds one sample). `FeedStore(dir).iter(component)` streams them back.
    `record_feeds(runners, calibration_set, out_dir, samples, part="calibration")` runs the
    pipelines a bundle runs (ImageSegmenter over RunnerDetector, VideoTracker over RunnerTracker)
    with fp32 runners (`torch_runners(Reference(state).graphs, names)`) wrapped by the hook ->
    (store, summary). `run_image_pipeline` / `run_tracker_pipeline` do the same with any runners.

**Stages** (each returns a `stage.StageResult`: path, format, precision, method, settings,
kept_float, operators, seconds, size_bytes, source_bytes, notes; `to_dict()`; a stage that cannot
make a precision raises `QuantizeError`, which the ladder records as the reason to step down)
    `ort.quantize_onnx(src, dst, precision, settings, feeds, flavour="ort"|"tensorrt")`:
        int8 (static QDQ; TensorRT: symmetric int8 Q/DQ on Conv/MatMul/Gemm inputs), int8-weights
        (dynamic), mixed-weights (int8 / int16 weights behind DequantizeLinear, the int8 ones chosen on
        the calibration feeds), int16-weights, int4-weights (MatMulNBits), fp16, fp32.
        `ort.qdq_summary(model)`, `ort.op_counts`.
    `coreml.quantize_coreml(graph, inputs, outputs, example, dst, precision, settings, feeds)`:
        int8 (W8A8 LinearQuantizer), int8-weights, palette6, palette4, fp16, fp32; the result's
        `.simulation` is the PyTorch module the gate measures on Linux. `coreml.simulate(graph,
        inputs, example, precision, feeds)` makes only that module (what the build's quantize stage
        gates; its convert stage converts the chosen precision once).
    `ptl.quantize_ptl(graph, input_names, output_names, example, dst, precision, settings, feeds)`:
        int8 (FX static, QNNPACK), int8-weights (dynamic Linear), fp32; run with `ptl.use_qnnpack()`.

**Measurement** (`metrics`, `evaluate`)
    `metrics.tensor_figures`, `sqnr_db`, `cosine`, `mask_iou` (margin-aware, via
    toolkit.verify.compare.mask_agreement), `match_detections`, `detection_figures`, `track_figures`,
    `worst`. `evaluate.measure_component(ref_runner, cand_runner, feeds, masks)` (alone),
    `measure_detector(ref_runners, cand_runners, part)`, `measure_tracker(...)` (end to end):
    each -> {"figures": flat dict for Gate.check, ...detail}.

**Report** (`report`)
    `op_type_sensitivity(onnx, calibration_feeds, evaluation_feeds, settings) -> rows` (one operator
    type quantized at a time, worst SQNR first); `write_report(ladders, out_dir, {component: rows})`
    -> (report.md, sensitivity.png): the `toolkit quantize-report` content.

Memory: recorded feeds live on disk (one sample in memory); ONNX Runtime's calibrators reduce after
every sample (`ort.STREAMING`), so calibration holds one sample's activations, not all of them.

Caveat: the embedded default weights are deterministic, not trained; figures measured with them
say how the quantizers treat these activations, not the trained model's (see metrics).

Imports: backends, components, convert (cache), pipeline (the chain walkers), runners, verify
(reference, mask agreement), deploy.bundle, files, errors, machine; the build's quantize stage
(toolkit.backends.quantize) drives it.
"""
from .calibration import CalibrationSet, Part, Prompt, Sample, TrackPrompt
from .gate import (
                   FORMAT_PRECISIONS,
                   LADDERS,
                   PRECISIONS,
                   Gate,
                   LadderResult,
                   QuantSettings,
                   Rung,
                   choose_precision,
                   ladder,
                   settle_end_to_end,
)
from .stage import QuantizeError, StageResult

__all__ = [
                   "FORMAT_PRECISIONS",
                   "LADDERS",
                   "PRECISIONS",
                   "CalibrationSet",
                   "Gate",
                   "LadderResult",
                   "Part",
                   "Prompt",
                   "QuantSettings",
                   "QuantizeError",
                   "Rung",
                   "Sample",
                   "StageResult",
                   "TrackPrompt",
                   "choose_precision",
                   "ladder",
                   "settle_end_to_end",
]
