"""Quantization probe on the real model (embedded default weights, NOT trained): static int8 of the
vision encoder and weight-only int8 / 4-bit of the text encoder, from a `toolkit export` directory.

    toolkit export --out /tmp/q-export --components vision_encoder,text_encoder --format onnx
    python benchmarks/quantize_probe.py /tmp/q-export OUT.json
    python benchmarks/quantize_probe.py --report /tmp/q-export OUT.json FEEDS_DIR REPORT_DIR

Calibration feeds: the fp32 image pipeline (PyTorch runners) over the shipped calibration part,
recorded per component by toolkit.quantize.feeds; the gate's figures: the evaluation part's feeds
(alone) and the image pipeline with the quantized encoders (end to end). Latency: ONNX Runtime CPU,
2 threads, fp32 and quantized sessions alternated in the same run, medians.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _latency(runners: dict, feeds: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in runners}
    for runner in runners.values():
        runner.infer(feeds)  # warm-up
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.infer(feeds)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main(export_dir: str, out: str) -> None:
    import torch

    from toolkit.checkpoint.weights import synthetic_state_dict
    from toolkit.machine import cpu_line
    from toolkit.pipeline.artifacts import DETECTOR_COMPONENTS
    from toolkit.quantize import CalibrationSet, Gate, QuantSettings, choose_precision
    from toolkit.quantize.evaluate import measure_component, measure_detector
    from toolkit.quantize.feeds import record_feeds, torch_runners
    from toolkit.quantize.ort import quantize_onnx
    from toolkit.runners.ort_runner import OrtRunner
    from toolkit.verify.compare import Reference

    torch.set_num_threads(2)
    export = Path(export_dir)
    work = Path(tempfile.mkdtemp(prefix="esam3-qprobe-"))
    cal = CalibrationSet.load()
    settings = QuantSettings()
    result: dict = {"cpu": cpu_line(), "threads": 2, "weights": "embedded default (deterministic, NOT trained)",
                    "calibration_digest": cal.digest(settings.to_dict())}

    t0 = time.perf_counter()
    graphs = Reference(synthetic_state_dict(), golden=False).graphs
    fp32 = torch_runners(graphs, DETECTOR_COMPONENTS)
    store, summary = record_feeds(fp32, cal, work / "calibration", samples=4,
                                  components=("vision_encoder", "text_encoder"))
    evaluation, _ = record_feeds(fp32, cal, work / "evaluation", samples=3, part="evaluation",
                                 components=("vision_encoder", "text_encoder"))
    result["recording_s"] = round(time.perf_counter() - t0, 1)
    result["recorded"] = summary

    jobs = {"vision_encoder": ["int8"], "text_encoder": ["int8-weights", "int4-weights"]}
    chosen_runners = {}
    for name, precisions in jobs.items():
        src = export / f"{name}.onnx"
        ref = OrtRunner(src, threads=2)
        rows = {}
        for precision in precisions:
            q = quantize_onnx(src, work / f"{name}.{precision}.onnx", precision, settings,
                              lambda n=name: store.iter(n))
            cand = OrtRunner(q.path, threads=2)
            alone = measure_component(ref, cand, evaluation.iter(name))
            feeds = next(evaluation.iter(name))
            lat = _latency({"fp32": ref, precision: cand}, feeds, 7 if name == "vision_encoder" else 15)
            rows[precision] = {"stage": q.to_dict(), "alone": alone, "latency_s": lat,
                               "latency_ratio": lat[precision] / lat["fp32"]}
            print(name, precision, q.method, f"{q.source_bytes / 2**20:.1f} -> {q.size_bytes / 2**20:.1f} MiB",
                  {k: round(v, 4) for k, v in alone["figures"].items() if isinstance(v, float)},
                  f"latency {lat['fp32']:.3f} -> {lat[precision]:.3f} s", flush=True)
            del cand
        result[name] = rows

        # the ladder with the default gate, reusing the artifacts made above
        def attempt(precision, name=name, rows=rows, ref=ref):
            if precision == "fp32":
                return str(export / f"{name}.onnx"), {}
            if precision not in rows:
                q = quantize_onnx(export / f"{name}.onnx", work / f"{name}.{precision}.onnx", precision, settings,
                                  lambda: store.iter(name))
                rows[precision] = {"stage": q.to_dict(), "alone": measure_component(
                    ref, OrtRunner(q.path, threads=2), evaluation.iter(name))}
            return str(work / f"{name}.{precision}.onnx"), rows[precision]["alone"]["figures"]
        ladder = choose_precision(name, "ort", precisions[0], attempt, settings.gate)
        result[name + "_ladder"] = ladder.to_dict()
        if ladder.chosen != "fp32":
            chosen_runners[name] = OrtRunner(ladder.artifact, threads=2)

    # end to end: the image pipeline with the quantized encoders vs fp32, on the evaluation part
    candidate = {**fp32, **chosen_runners}
    t0 = time.perf_counter()
    e2e = measure_detector(fp32, candidate, cal.evaluation, samples=3)
    result["end_to_end"] = {**e2e, "components_quantized": sorted(chosen_runners),
                            "gate_failures": Gate().check(e2e["figures"]), "seconds": round(time.perf_counter() - t0, 1)}
    print("end to end", e2e["figures"], flush=True)
    print(f"recorded feeds and artifacts kept in {work} (for --report)", flush=True)
    Path(out).write_text(json.dumps(result, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def report(export_dir: str, probe_json: str, feeds_dir: str, out_dir: str) -> None:
    """The sensitivity report of a probe run: the ladders' table, and per operator type for the
    component with the worst int8 SQNR (feeds_dir: the probe's recorded calibration/ and evaluation/)."""
    from toolkit.machine import cpu_line
    from toolkit.quantize.feeds import FeedStore
    from toolkit.quantize.report import op_type_sensitivity, write_report
    result = json.loads(Path(probe_json).read_text())
    ladders = [result[k] for k in result if k.endswith("_ladder")]
    worst = min(ladders, key=lambda d: d["rungs"][0]["figures"].get("sqnr_db", float("inf")))["component"]
    calibration, evaluation = FeedStore(Path(feeds_dir) / "calibration"), FeedStore(Path(feeds_dir) / "evaluation")
    start = time.perf_counter()
    rows = op_type_sensitivity(Path(export_dir) / f"{worst}.onnx", lambda: calibration.iter(worst),
                               lambda: evaluation.iter(worst))
    header = (f"# Sensitivity ({cpu_line()}; embedded default weights, NOT trained; per-operator-type pass "
              f"{time.perf_counter() - start:.0f} s)")
    md, png = write_report(ladders, out_dir, {worst: rows}, header)
    print(md, png)


if __name__ == "__main__":
    if sys.argv[1] == "--report":
        report(*sys.argv[2:6])
    else:
        main(*sys.argv[1:3])
