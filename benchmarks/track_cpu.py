"""Time and peak memory per frame of `toolkit track` on this machine.

Usage: .venv/bin/python benchmarks/track_cpu.py [--frames 10] [--threads 2]
Writes benchmarks/results/<date>-track-cpu.json and prints a Markdown table.

The clip is docs/coffee.png moved like the golden tracker frames (frame t shifted right by 4t and
down by 2t pixels, edges repeated; frames 0-2 are the golden clip), 600x400, with the golden click
(312, 180) on frame 0. In one process: the prompt step (backbone, SAM heads, memory encoding of
the prompt), then every following frame with the calls `toolkit track` makes, timed per frame
and per stage (forward hooks on the modules); the median is over the tracked frames. A text
prompt on frame 0 (detector + mask prompts) is timed once. Peak memory is the maximum resident set
size of a whole `toolkit track` run over the same clip in a child process (os.wait4 ru_maxrss),
model loading included. On a shared machine the wall times grow with the other load; the process
CPU time divided by the thread count is given as a steadier estimate of the unloaded time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_cpu import machine

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "docs" / "coffee.png"
CLICK = (312.0, 180.0)
# Upstream's golden tracker run (same clip and click, 2 threads, stage recording on):
# add_new_points_or_box 7.9 s, propagate_in_video over the 3 frames (preflight included) 27.5 s.
UPSTREAM = {"prompt_s": 7.87, "propagate_3_frames_s": 27.5}


def make_clip(folder: Path, num_frames: int) -> None:
    rgb = np.array(Image.open(IMAGE).convert("RGB"))
    h, w = rgb.shape[:2]
    for t in range(num_frames):
        rows = np.clip(np.arange(h) - 2 * t, 0, h - 1)
        cols = np.clip(np.arange(w) - 4 * t, 0, w - 1)
        Image.fromarray(rgb[rows][:, cols]).save(folder / f"{t}.png")


class StageTimer:
    """Seconds spent in chosen modules (forward pre-hook to forward hook), accumulated until `take`."""

    def __init__(self, modules: dict[str, list[torch.nn.Module]]):
        self.spent: dict[str, float] = defaultdict(float)
        for name, group in modules.items():
            for module in group:
                module.register_forward_pre_hook(self._start)
                module.register_forward_hook(lambda m, a, o, name=name: self._stop(name, m))
        self._started: dict[int, float] = {}

    def _start(self, module, _args):
        self._started[id(module)] = time.perf_counter()

    def _stop(self, name, module):
        self.spent[name] += time.perf_counter() - self._started.pop(id(module))

    def take(self) -> dict[str, float]:
        out, self.spent = dict(self.spent), defaultdict(float)
        return out


def in_process(clip: Path) -> dict:
    from toolkit.api import load_video_tracker
    from toolkit.pipeline.video import ClickPrompt, open_frames

    frames = open_frames(clip)
    start = time.perf_counter()
    tracker, _ = load_video_tracker(None)
    load_s = time.perf_counter() - start
    trk, backbone = tracker.tracker, tracker.backbone
    timer = StageTimer({
        "backbone trunk (RepViT + head)": [backbone.trunk],
        "tracker neck + position encodings": [backbone.sam2_convs, backbone.position_encoding],
        "memory attention": [trk.transformer["encoder"]],
        "SAM prompt encoder + mask decoder": [trk.sam_prompt_encoder, trk.sam_mask_decoder],
        "memory encoder": [trk.maskmem_backbone],
    })
    start = time.perf_counter()
    session = tracker.prompt(frames, 0, ClickPrompt((CLICK,), (1,)))
    prompt_s = time.perf_counter() - start
    timer.take()
    per_frame = []
    for t in range(len(frames)):
        plan = session.bank.plan(t)
        start, cpu_start = time.perf_counter(), time.process_time()
        tracker.propagate_frame(session, t, reverse=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if t:
            per_frame.append({"frame": t, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                              "spatial_memories": len(plan.spatial),
                              "pointers": len(plan.pointers),
                              "stages_s": {k: round(v, 3) for k, v in timer.take().items()}})
    bank_mib = sum(m.features.numel() * m.features.element_size() + m.obj_ptr.numel() * 4
                   for m in [*session.bank.conditioning.values(), *session.bank.tracked.values()]) / 2**20

    text_tracker, _ = load_video_tracker(None, with_detector=True)
    start = time.perf_counter()
    text_session = text_tracker.prompt(frames, 0, "person", threshold=0.1)
    text_prompt_s = time.perf_counter() - start

    seconds = [f["seconds"] for f in per_frame]
    full = [f["seconds"] for f in per_frame if f["spatial_memories"] == 7]
    return {
        "load_default_weights_s": round(load_s, 3),
        "prompt_click_s": round(prompt_s, 3),
        "prompt_text_s": round(text_prompt_s, 3), "text_objects": len(text_session.objects),
        "tracked_frame_median_s": round(statistics.median(seconds), 3),
        "tracked_frame_median_cpu_s": round(statistics.median(f["cpu_seconds"] for f in per_frame), 3),
        "tracked_frame_full_memory_median_s": round(statistics.median(full), 3) if full else None,
        "stage_median_s": {name: round(statistics.median(f["stages_s"].get(name, 0.0) for f in per_frame), 3)
                           for name in per_frame[0]["stages_s"]},
        "golden_clip_s": round(prompt_s + sum(seconds[:2]), 3),
        "memory_bank_mib_per_frame": round(bank_mib / len(frames), 3),
        "per_frame": per_frame,
    }


def child_run(clip: Path, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "toolkit.cli", "track", "--frames", str(clip),
               "--point", f"{CLICK[0]:g},{CLICK[1]:g}", "--out", f"{tmp}/out"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if status:
            raise SystemExit(f"toolkit track failed with status {status}")
        report = json.loads(Path(f"{tmp}/out/tracks.json").read_text())
    return {"peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "wall_s": round(wall, 1),
            "seconds_per_frame": report["seconds_per_frame"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10, help="clip length (at least 8: the memory fills at frame 7)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp)
        make_clip(clip, args.frames)
        ours = in_process(clip)
        ours["cli"] = child_run(clip, args.threads)
    result = {"benchmark": f"toolkit track, {args.frames} frames 600x400 (coffee.png moving), one click on frame 0",
              "date": datetime.date.today().isoformat(), "threads": args.threads, "frames": args.frames,
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "machine": machine(), "toolkit": ours, "upstream_golden_run": UPSTREAM,
              "weights": "embedded default (deterministic; speed does not depend on the values)"}
    path = ROOT / "benchmarks" / "results" / f"{result['date']}-track-cpu.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")

    print(f"| {args.threads} threads, {args.frames} frames of 600x400 | seconds |\n|---|---|")
    rows = [("prompt frame, one click (backbone, SAM heads, memory encoding)", ours["prompt_click_s"]),
            ("prompt frame, text (backbone, detector, mask prompts, memory encoding)", ours["prompt_text_s"]),
            ("tracked frame, median", ours["tracked_frame_median_s"]),
            (f"tracked frame, median CPU time / {args.threads} threads (less sensitive to other load)",
             round(ours["tracked_frame_median_cpu_s"] / args.threads, 3)),
            ("tracked frame with a full memory (7 frames), median", ours["tracked_frame_full_memory_median_s"])]
    rows += [(f"- {name}", s) for name, s in ours["stage_median_s"].items()]
    rows += [("golden 3-frame clip: prompt + 2 tracked frames (upstream: "
              f"{UPSTREAM['prompt_s'] + UPSTREAM['propagate_3_frames_s']:.1f})", ours["golden_clip_s"])]
    for label, value in rows:
        print(f"| {label} | {value} |")
    cli = ours["cli"]
    print(f"\nwhole `toolkit track` run over {args.frames} frames: peak RSS {cli['peak_rss_gib']} GiB, "
          f"{cli['wall_s']} s wall (model loading and output writing included), {cli['seconds_per_frame']} s per frame; "
          f"memory bank {ours['memory_bank_mib_per_frame']} MiB per frame and object")
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
          f"load average after the run {result['load_average_after']}; written {path}")


if __name__ == "__main__":
    main()
