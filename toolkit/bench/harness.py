"""The measurement itself, as it runs on the device: peak, components x runners, memory, scenarios.

`measure(config)` returns the results document (schema `SCHEMA`, see `report.py`); it is what
`toolkit bench` runs locally and what a remote device runs as
`python -m toolkit.bench.harness CONFIG.json RESULT.json` after the toolkit and the artifacts
were copied there (`devices.py`).

Latency: `warmup` untimed runs, then `repeats` timed runs of `Runner.infer` on the component's
declared example inputs (typical values of its dynamic dimensions, recorded per row);
percentiles are numpy's linear interpolation, std is the sample standard deviation.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

SCHEMA = "toolkit.bench/1"
Progress = Callable[[str], None]

QUICK = {"repeats": 3, "warmup": 1, "scenario_repeats": 1, "scenario_warmup": 0, "memory": False,
         "tracking_frames": 3}


@dataclass
class BenchConfig:
    """What to measure. Paths are as seen on the device that runs `measure`."""

    components: list[str]
    runners: list[str]
    scenarios: list[str]
    threads: int | None = None  # None: every core of the device
    repeats: int = 10
    warmup: int = 2
    scenario_repeats: int = 3
    scenario_warmup: int = 1
    tracking_frames: int = 8
    memory: bool = True
    quick: bool = False
    checkpoint: str | None = None
    artifacts: str | None = None
    inputs: str | None = None  # image.png + frames/ (scenarios.prepare_inputs)
    bundles: list[str] = field(default_factory=list)  # bundle directories (bundles.py)

    def __post_init__(self):
        if self.quick:
            for key, value in QUICK.items():
                setattr(self, key, value)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BenchConfig:
        names = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in names and k != "quick"})
        config.quick = bool(data.get("quick"))  # the values above are already the quick ones
        return config


def with_changes(config: BenchConfig, **changes) -> BenchConfig:
    """A copy of `config` with `changes` (no __post_init__: --quick's values stay as they were set)."""
    changed = copy.copy(config)
    for key, value in changes.items():
        setattr(changed, key, value)
    return changed


def summarize(seconds: Sequence[float]) -> dict:
    """Latency statistics in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timed runs")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    return {"n": int(ms.size), "p50": round(float(p50), 3), "p90": round(float(p90), 3),
            "p99": round(float(p99), 3), "mean": round(float(ms.mean()), 3), "std": round(std, 3),
            "min": round(float(ms.min()), 3), "max": round(float(ms.max()), 3)}


def timed_runs(run: Callable[[], float | None], warmup: int, repeats: int,
               on_run: Callable[[int, float], None] = lambda i, s: None) -> list[float]:
    """Seconds of `repeats` calls after `warmup` untimed ones. `run` may return its own timing
    (a runner's `last_inference_time`); otherwise the call is timed here."""
    for _ in range(warmup):
        run()
    seconds = []
    for i in range(repeats):
        start = time.perf_counter()
        own = run()
        seconds.append(own if own is not None else time.perf_counter() - start)
        on_run(i, seconds[-1])
    return seconds


@dataclass
class _Row:
    component: str
    runner: str
    status: str = "ok"  # ok | skipped | failed
    reason: str | None = None
    artifact: str | None = None
    size_bytes: int | None = None
    dims: dict = field(default_factory=dict)
    latency_ms: dict | None = None
    ratio_to_eager: float | None = None
    gflops_per_s: float | None = None
    fraction_of_peak: float | None = None
    memory: dict | None = None
    load_1min: float | None = None  # the device's 1-minute load average when the timed runs ended


def sig3(x: float | None) -> str:
    """Three significant digits without an exponent (0.0123, 1.23, 123, 12345)."""
    if x is None:
        return "-"
    if x == 0 or abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def load_1min() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"


def _flops(comp, feeds, sources, runners: list[str]) -> dict | None:
    from .flops import count_onnx, count_torch
    try:
        onnx_path = sources.artifact(comp.name, ".onnx")
        if onnx_path is not None:
            return count_onnx(onnx_path, feeds)
        if "torch" in runners:
            return count_torch(sources.graph(comp.name), feeds, comp.input_names)
    except Exception as e:  # noqa: BLE001 - a counting failure is reported, the latencies still count
        return {"gflop": None, "source": None, "error": _error(e)}
    return None


def _time_runner(runner, feeds: dict, warmup: int, repeats: int) -> list[float]:
    def run_once() -> float:
        runner.infer(feeds)
        return runner.last_inference_time
    return timed_runs(run_once, warmup, repeats)


def _component_rows(config: BenchConfig, sources, peak: dict, progress: Progress) -> tuple[list[dict], dict]:
    from ..components.registry import COMPONENTS
    from .backends import EAGER, RUNNER_KINDS

    rows, flops = [], {}
    for name in config.components:
        comp = COMPONENTS[name]
        feeds = comp.example()
        dims = {d.name: d.typical for d in comp.dims()}
        flops[name] = _flops(comp, feeds, sources, config.runners)
        gflop = (flops[name] or {}).get("gflop")
        for kind_name in config.runners:
            kind = RUNNER_KINDS[kind_name]
            row = _Row(name, kind_name, dims=dims)
            rows.append(row)
            if reason := kind.unavailable(comp, sources):
                row.status, row.reason = "skipped", reason
                progress(f"{name} / {kind_name}: skipped ({reason})")
                continue
            artifact = sources.artifact(name, kind.suffix) if kind.suffix else None
            row.artifact = artifact.name if artifact else None
            progress(f"{name} / {kind_name}: {config.warmup} warm-up + {config.repeats} timed runs")
            try:
                row.size_bytes = kind.size_bytes(comp, sources)
                runner = kind.build(comp, sources)
                seconds = _time_runner(runner, feeds, config.warmup, config.repeats)
                del runner  # free it before the next one is built
            except Exception as e:  # noqa: BLE001 - one failing runner must not stop the others
                row.status, row.reason = "failed", _error(e)
                progress(f"{name} / {kind_name}: FAILED ({row.reason})")
                continue
            row.latency_ms = summarize(seconds)
            row.load_1min = load_1min()
            if gflop:
                row.gflops_per_s = round(gflop / (row.latency_ms["p50"] / 1e3), 2)
                row.fraction_of_peak = round(row.gflops_per_s / peak["peak_gflops"], 4)
            progress(f"{name} / {kind_name}: p50 {sig3(row.latency_ms['p50'])} ms, p90 {sig3(row.latency_ms['p90'])} ms"
                     + (f", {sig3(row.gflops_per_s)} GFLOP/s" if row.gflops_per_s else ""))
        eager = next((r for r in rows if r.component == name and r.runner == EAGER and r.latency_ms), None)
        for r in rows:
            if r.component == name and r.latency_ms and eager is not None:
                r.ratio_to_eager = round(r.latency_ms["p50"] / eager.latency_ms["p50"], 4)
    return [asdict(r) for r in rows], flops


def _memory(config: BenchConfig, rows: list[dict], threads: int, progress: Progress) -> dict:
    from . import memory
    progress("memory: baseline child (imports only)")
    baseline = round(memory.measure_baseline(threads), 1)
    progress(f"memory: baseline {baseline:.0f} MiB")
    for row in rows:
        if row["status"] != "ok":
            continue
        try:
            found = memory.measure_component(row["component"], row["runner"], config.checkpoint, config.artifacts,
                                             threads)
            found["net_mib"] = round(found["peak_rss_mib"] - baseline, 1)
            row["memory"] = found
            progress(f"memory: {row['component']} / {row['runner']}: peak {found['peak_rss_mib']:.0f} MiB, "
                     f"net {found['net_mib']:.0f} MiB")
        except Exception as e:  # noqa: BLE001
            row["memory"] = {"error": _error(e)}
            progress(f"memory: {row['component']} / {row['runner']}: FAILED ({row['memory']['error']})")
    return {"measured": True, "baseline_mib": baseline, "method": memory.METHOD,
            "baseline": "a child that imports numpy, torch, onnxruntime and the toolkit's components, "
                        "runners and bench modules, then exits"}


def measure(config: BenchConfig, progress: Progress = lambda message: None) -> dict:
    """Run everything `config` asks for on this machine; returns the results document."""
    import torch

    from ..components.registry import COMPONENTS
    from . import scenarios as scenario_mod
    from .backends import RUNNER_KINDS, Sources
    from .devices import describe
    from .peak import matmul_peak

    unknown = [n for n in config.components if n not in COMPONENTS]
    unknown += [n for n in config.runners if n not in RUNNER_KINDS]
    unknown += [n for n in config.scenarios if n not in scenario_mod.SCENARIOS]
    if unknown:
        raise ValueError(f"unknown names {unknown}")
    started = time.time()
    threads = config.threads or os.cpu_count() or 1
    device = describe()
    torch.set_num_threads(threads)
    progress(f"device: {device['cpu_model']}, {device['cores']} cores, load average {device['load_average']}")
    progress(f"fp32 matmul peak, {threads} threads")
    peak = matmul_peak(threads)
    progress(f"peak {peak['peak_gflops']:.0f} GFLOP/s (median {peak['median_gflops']:.0f})")
    sources = Sources(config.checkpoint, config.artifacts, threads, progress)
    extra = {}
    if config.bundles:
        rows, flops, scenario_rows, memory, extra = _bundle_mode(config, sources, progress)
    else:
        rows, flops = _component_rows(config, sources, peak, progress)
        memory = {"measured": False, "reason": "--quick" if config.quick else "not asked for"}
        if config.memory:
            memory = _memory(config, rows, threads, progress)
        scenario_rows = scenario_mod.run_scenarios(config, sources, progress)
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "config": config.to_json(),
        "threads": threads,
        "weights": sources.weights_label if "weights" in sources.__dict__ else None,  # None: no PyTorch run
        "device": device,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "peak": peak,
        "components": rows,
        "flops": flops,
        "memory": memory,
        "scenarios": scenario_rows,
        **extra,
    }


def _bundle_mode(config: BenchConfig, sources, progress: Progress) -> tuple:
    """`--bundle`: every bundle's artifacts and runtime scenarios beside the reference runners (bundles.py)."""
    from . import bundles as bundle_mod

    opened, items, taken = [], [], set()
    for path in config.bundles:
        try:
            opened.append(bundle_mod.open_one(path, taken))
            items.append(opened[-1].describe())
        except Exception as e:  # noqa: BLE001 - checked before the run; a bundle changed since is reported
            items.append({"label": Path(path).name, "path": path, "status": "skipped", "reason": _error(e)})
            progress(f"bundle {path}: skipped ({_error(e)})")
    names = [n for n in config.components if any(n in b.manifest["components"] for b in opened)]
    config = with_changes(config, components=names, threads=sources.threads)
    rows = bundle_mod.component_rows(config, opened, sources, progress)
    scenario_rows = bundle_mod.scenario_rows(config, opened, sources, progress)
    whole = bundle_mod.whole_runs(config, opened, scenario_rows, progress)
    memory = {"measured": False, "reason": "with --bundle, whole runs are measured (bundles.whole_run), not "
                                           "components"}
    return rows, {}, scenario_rows, memory, {"bundles": {"items": items, "whole_run": whole}}


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    """Device side: `python -m toolkit.bench.harness CONFIG.json RESULT.json`."""
    with open(argv[0]) as f:
        config = BenchConfig.from_json(json.load(f))
    results = measure(config, _progress)
    with open(argv[1], "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1:])
