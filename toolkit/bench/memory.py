"""Peak resident memory of one component on one runner, each in a fresh child process.

The child imports what the harness imports (torch, onnxruntime, numpy, the toolkit), builds the
runner, runs the component's example feeds twice, and exits; its peak resident set size is
`ru_maxrss` from `os.wait4`. A baseline child that only does the imports gives the harness's own
footprint, which is subtracted (`net_mib`) and stated (`baseline_mib`).

Two Linux details decide whether the figure means anything:
- A child's `ru_maxrss` starts at its parent's peak (fork copies the page tables, and exec
  records the old address space's high-water mark): spawned straight from the benchmark process
  (GBs of models), every child would report that. Children are therefore started by a small
  launcher process, and the launcher reports the child's rusage.
- The PyTorch runner needs the model built from the checkpoint, and the graph wrappers can hold
  references to modules they do not run. The child releases every checkpoint tensor outside the
  component's declared prefixes, frees the checkpoint, and resets the peak
  (`/proc/self/clear_refs` = 5) before running: the figure is the component's own weights and
  working memory. Where the reset is not possible the record says `reset: false`, and the figure
  includes building the whole model.

Run as `python -m toolkit.bench.memory CHILD_JSON` (the child side).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping

METHOD = ("ru_maxrss (os.wait4) of a child process per component and runner, started by a small "
          "launcher; the baseline child (imports only) is subtracted")
_LAUNCHER = (
    "import json, os, subprocess, sys\n"
    "p = subprocess.Popen(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "err = p.stderr.read().decode(errors='replace')\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(json.dumps({'maxrss_kib': usage.ru_maxrss, 'status': status, 'stderr': err[-2000:]}))\n"
)


def _imports():
    """The harness's import set: the baseline child stops after this."""
    import numpy  # noqa: F401
    import torch  # noqa: F401

    from ..components import registry  # noqa: F401
    from ..runners import ort_runner, ptl_runner, torch_runner  # noqa: F401
    from . import backends  # noqa: F401


def peak_rss_kib(argv: list[str], env: Mapping[str, str] | None = None, timeout: float = 1800) -> int:
    """Peak RSS (KiB) of `argv` run as a grandchild of a small launcher; raises on failure."""
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(argv)], capture_output=True, text=True, check=False,
                          env=dict(env) if env is not None else None, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"memory launcher failed: {done.stderr.strip()[-500:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["status"]:
        lines = [line for line in report["stderr"].splitlines() if line.strip()]
        raise RuntimeError(f"child exited with status {report['status']}: {lines[-1] if lines else 'no message'}")
    return int(report["maxrss_kib"])


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    # The child must import the same toolkit as the harness (on a device: the copied one).
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def measure_baseline(threads: int) -> float:
    """MiB: a child that imports the harness's modules and exits."""
    argv = [sys.executable, "-m", "toolkit.bench.memory", json.dumps({"baseline": True, "threads": threads})]
    return peak_rss_kib(argv, _child_env(threads)) / 1024


def measure_component(component: str, runner: str, checkpoint: str | None, artifacts: str | None,
                      threads: int) -> dict:
    """{"peak_rss_mib", "reset"} of one component on one runner kind."""
    spec = {"component": component, "runner": runner, "checkpoint": checkpoint, "artifacts": artifacts,
            "threads": threads}
    argv = [sys.executable, "-m", "toolkit.bench.memory", json.dumps(spec)]
    kib = peak_rss_kib(argv, _child_env(threads))
    return {"peak_rss_mib": round(kib / 1024, 1), "reset": runner != "torch" or _can_reset()}


def _can_reset() -> bool:
    return os.access("/proc/self/clear_refs", os.W_OK)


def _release_other_weights(sources, comp) -> None:
    """Empty every checkpoint tensor of the model outside the component's prefixes, drop the
    checkpoint, return freed memory to the OS and reset the peak RSS."""
    import ctypes
    import gc

    import torch

    models = sources.models
    for prefix, half in (("detector.", "detector"), ("tracker.", "tracker")):
        module = models.__dict__.get(half)  # the halves built (Models builds each on first use)
        for key, tensor in (module.state_dict(keep_vars=True).items() if module is not None else ()):
            if not (prefix + key).startswith(comp.prefixes):
                tensor.data = torch.empty(0, dtype=tensor.dtype)
    models.state = {}  # the checkpoint tensors the built halves do not hold
    sources.__dict__.pop("weights", None)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    if _can_reset():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _child(spec: dict) -> None:
    _imports()
    if spec.get("baseline"):
        return
    import torch

    from ..components.registry import COMPONENTS
    from .backends import RUNNER_KINDS, Sources

    torch.set_num_threads(spec["threads"])
    comp = COMPONENTS[spec["component"]]
    kind = RUNNER_KINDS[spec["runner"]]
    sources = Sources(spec["checkpoint"], spec["artifacts"], spec["threads"])
    runner = kind.build(comp, sources)
    if kind.suffix is None:
        _release_other_weights(sources, comp)
    feeds = comp.example()
    for _ in range(2):
        runner.infer(feeds)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
