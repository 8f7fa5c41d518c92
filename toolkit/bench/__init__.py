"""`toolkit bench`: latency, peak memory, FLOPs and end-to-end time per component and runner, per device.

  harness.py    what runs on the device: config, timing loop, statistics, the whole measurement
  backends.py   runner kinds (torch, onnx, ort, ptl, onnx-cuda) and the weights / artifacts
  memory.py     peak RSS per component x runner in child processes (ru_maxrss via os.wait4)
  flops.py      FLOPs from the ONNX graph (or torch's flop counter without one)
  peak.py       this machine's fp32 matmul ceiling, measured in the same run
  scenarios.py  end-to-end: image + text, image + text + boxes, tracking (eager and per runner)
  bundles.py    `--bundle`: each bundle's artifacts and runtime scenarios beside fp32 / eager, sizes
  wholerun.py   peak RSS of whole runs (runtime from a bundle, eager), each in a fresh process
  devices.py    local, or ssh://user@host[:port] (copy, run with the device's Python, bring back)
  report.py     the versioned JSON schema, Markdown, PNG plots

Components come from `toolkit.components.registry` and runners from `toolkit.runners`: nothing here lists
components or implements a backend. Imports: backends, checkpoint, components, deploy (reading
bundles), pipeline, runners, runtime, verify; imported by api / cli only.
"""
from __future__ import annotations

from collections.abc import Callable

from .harness import SCHEMA, BenchConfig


def run_bench(config: BenchConfig, device: str = "local",
              progress: Callable[[str], None] = lambda message: None) -> dict:
    """Measure on `device` ("local" or "ssh://user@host[:port]"); returns the results document."""
    from .devices import open_device
    from .report import validate

    target = open_device(device)
    results = target.run(config, progress)
    results["device"]["url"] = target.url
    return validate(results)


__all__ = ["SCHEMA", "BenchConfig", "run_bench"]
