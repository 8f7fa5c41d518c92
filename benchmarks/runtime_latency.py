"""Latency of today's `toolkit run` path against the memory-lean runtime, interleaved in one run so
that both see the same machine load: fresh child processes alternate between BEFORE (a bundle
with one-call attention, ONNX Runtime's default session options = what toolkit run used) and
AFTER (a bundle with chunked attention, the runtime's lean options). Median wall time per side
and the ratio AFTER / BEFORE.

    .venv/bin/python benchmarks/runtime_latency.py BEFORE_BUNDLE AFTER_BUNDLE --out FILE.json [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toolkit.bench.scenarios import prepare_inputs
from toolkit.bench.wholerun import scenario_spec, whole_run
from toolkit.machine import cpu_line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    result = {"cpu": cpu_line(), "threads": args.threads, "repeats": args.repeats, "frames": args.frames,
              "load_before": os.getloadavg(), "scenarios": {}}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = prepare_inputs(Path(tmp) / "inputs", args.frames)
        for scenario in ("image_text", "tracking"):
            times = {"before": [], "after": []}
            for _ in range(args.repeats):
                for side, bundle, lean in (("before", args.before, False), ("after", args.after, True)):
                    spec = scenario_spec("runtime", scenario, inputs, Path(bundle).resolve(), lean=lean)
                    times[side].append(whole_run(spec, args.threads)["wall_s"])
                    print(scenario, side, times[side][-1], flush=True)
            med = {k: statistics.median(v) for k, v in times.items()}
            result["scenarios"][scenario] = {"wall_s": times, "median_s": med,
                                             "ratio_after_before": round(med["after"] / med["before"], 3)}
    result["load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
