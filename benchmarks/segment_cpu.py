"""Time and peak memory of `toolkit segment` on this machine, next to upstream's figures.

Usage: .venv/bin/python benchmarks/segment_cpu.py [--repeats 3] [--threads 2]
Writes benchmarks/results/<date>-segment-cpu.json and prints a Markdown table.

Stage times are medians of `--repeats` runs after one warm-up, in one process, with the same
stage methods `toolkit segment` calls: wall time and process CPU time (CPU time / threads is the
wall time the work would take on an otherwise idle machine; the load average is recorded). Peak memory is the maximum resident set size of a whole
`toolkit segment` run in a child process (os.wait4 ru_maxrss), model loading included.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "docs" / "coffee.png"
BOX = (162.0, 68.0, 438.0, 268.0)  # the golden box prompt, in pixels
# Upstream on a 2-core CPU of this kind (shared/docs/efficientsam3.md): eager PyTorch, 2 threads.
UPSTREAM = {"set_image_s": 3.2, "text_prompt_s": 4.7, "image_and_text_s": 7.8, "text_and_box_s": 11.1,
            "peak_rss_gib": 2.8}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1),
            "os": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}


def stage_times(repeats: int) -> dict:
    from toolkit.api import load_detector
    from toolkit.model.detector import detections
    from toolkit.pipeline.image import boxes_px_to_prompt
    from toolkit.pipeline.preprocess import load_rgb, preprocess_image
    from toolkit.pipeline.tokenizer import Tokenizer

    start = time.perf_counter()
    detector, _ = load_detector(None)
    load_s = time.perf_counter() - start
    rgb, tokenizer = load_rgb(IMAGE), Tokenizer()
    boxes, labels = boxes_px_to_prompt([BOX], rgb.shape[:2], [True])
    timings: dict[str, list[float]] = {}
    with torch.inference_mode():
        for i in range(repeats + 1):
            marks = [(time.perf_counter(), time.process_time())]
            features = detector.encode_image(preprocess_image(rgb))
            marks.append((time.perf_counter(), time.process_time()))
            text = detector.encode_text(tokenizer("person"))
            detections(detector.forward_grounding(features, text), rgb.shape[:2], 0.5)
            marks.append((time.perf_counter(), time.process_time()))
            text = detector.encode_text(tokenizer("person"))
            detections(detector.forward_grounding(features, text, boxes, labels), rgb.shape[:2], 0.5)
            marks.append((time.perf_counter(), time.process_time()))
            if not i:  # the first round is the warm-up
                continue
            for clock, unit in ((0, "s"), (1, "cpu_s")):
                image, text_only, with_box = (marks[k + 1][clock] - marks[k][clock] for k in range(3))
                for key, value in (("set_image", image), ("text_prompt", text_only),
                                   ("image_and_text", image + text_only), ("text_and_box", image + with_box)):
                    timings.setdefault(f"{key}_{unit}", []).append(value)
    out = {k: round(statistics.median(v), 3) for k, v in timings.items()}
    out["load_default_weights_s"] = round(load_s, 3)
    return out


def peak_rss_gib(threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "toolkit.cli", "segment", "--image", str(IMAGE), "--prompt", "person",
               "--out", f"{tmp}/out"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        if status:
            raise SystemExit(f"toolkit segment failed with status {status}")
        return round(usage.ru_maxrss / 2**20, 2)  # KiB -> GiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours = stage_times(args.repeats)
    ours["peak_rss_gib"] = peak_rss_gib(args.threads)
    load = os.getloadavg()
    result = {"benchmark": "toolkit segment, coffee.png 600x400, prompt 'person' (+ one box)",
              "date": datetime.date.today().isoformat(), "threads": args.threads,
              "load_average_1_5_15": [round(x, 2) for x in load], "repeats": args.repeats,
              "machine": machine(), "toolkit": ours, "upstream": UPSTREAM,
              "weights": "embedded default (deterministic; speed does not depend on the values)"}
    path = ROOT / "benchmarks" / "results" / f"{result['date']}-segment-cpu.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    rows = [("set_image (pre-processing + RepViT + neck)", "set_image_s"), ("text prompt", "text_prompt_s"),
            ("image + text", "image_and_text_s"), ("image + text + one box", "text_and_box_s"),
            ("peak RSS of a whole `toolkit segment` run (GiB)", "peak_rss_gib")]
    print(f"| {args.threads} threads, median of {args.repeats} | toolkit wall | toolkit CPU / {args.threads} "
          "| upstream wall (quiet machine) |\n|---|---|---|---|")
    for label, key in rows:
        cpu = ours.get(key[:-2] + "_cpu_s") if key.endswith("_s") else None
        per_thread = f"{cpu / args.threads:.2f}" if cpu is not None else ""
        print(f"| {label} | {ours[key]} | {per_thread} | {UPSTREAM[key]} |")
    print(f"\nload average during the run (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cores']} cores; written {path}")


if __name__ == "__main__":
    main()
