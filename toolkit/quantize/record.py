"""`toolkit calibrate`: the feeds every component really receives from the fp32 pipelines over a
calibration set, written to a folder with per-input statistics.

It is the build's own recording (`session.Calibration.store`: the fp32 pipelines a bundle runs,
walked by `toolkit.components.registry.ground` for the detector, with `FeedRecorder` streaming each distinct
call to `<part>/<component>/NNNN.npz`), run on its own so a user can look at the activations a
quantizer will see, check that their own `--calibration DIR` reaches every component, and compare
sets. Statistics are reduced while streaming the stored samples back one at a time (min, max, mean,
standard deviation, mean of |x|, a high percentile of |x| per sample, kept as the worst over the
samples), so memory holds one sample, never the part.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .feeds import FeedStore
from .gate import QuantSettings
from .session import Calibration

PARTS = ("calibration", "evaluation")
ABS_PERCENTILE = 99.99  # a clipping point calibrators pick around (percentile method): how far the max sits above it


@dataclass
class _Running:
    """Streaming statistics of one input over the samples (floats; integer inputs keep only the range)."""

    dtype: str = ""
    shapes: set | None = None
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    total_abs: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    abs_percentile: float = 0.0
    samples: int = 0

    def add(self, x: np.ndarray) -> None:
        self.dtype, self.samples = str(x.dtype), self.samples + 1
        self.shapes = (self.shapes or set()) | {tuple(int(d) for d in x.shape)}
        if x.size == 0:
            return
        self.minimum, self.maximum = min(self.minimum, float(x.min())), max(self.maximum, float(x.max()))
        if np.issubdtype(x.dtype, np.floating):
            v = x.astype(np.float64).ravel()
            self.count += v.size
            self.total, self.total_sq, self.total_abs = (self.total + v.sum(), self.total_sq + (v * v).sum(),
                                                         self.total_abs + np.abs(v).sum())
            self.abs_percentile = max(self.abs_percentile, float(np.percentile(np.abs(v), ABS_PERCENTILE)))

    def to_dict(self) -> dict:
        out = {"dtype": self.dtype, "samples": self.samples, "shapes": sorted(list(s) for s in self.shapes or ())}
        if self.minimum <= self.maximum:
            out.update({"min": self.minimum, "max": self.maximum})
        if self.count:
            mean = self.total / self.count
            out.update({"mean": mean, "std": max(self.total_sq / self.count - mean * mean, 0.0) ** 0.5,
                        "mean_abs": self.total_abs / self.count, f"abs_p{ABS_PERCENTILE:g}": self.abs_percentile,
                        "max_over_percentile": max(abs(self.minimum), abs(self.maximum)) / self.abs_percentile
                        if self.abs_percentile else None})
        return out


def feed_statistics(store: FeedStore, component: str) -> dict[str, dict]:
    """Per input of `component`: the statistics over every stored sample, streamed one at a time."""
    running: dict[str, _Running] = {}
    for sample in store.iter(component):
        for name, x in sample.items():
            running.setdefault(name, _Running()).add(x)
    return {name: r.to_dict() for name, r in running.items()}


@dataclass
class CalibrateResult:
    out: str
    description: dict  # the set, its digest, samples, what was recorded per part
    statistics: dict  # part -> component -> input -> figures
    files: list[str]


def record_calibration(graphs, components: Iterable[str], out: Path, directory: str | Path | None = None,
                       samples: int | None = None, parts: Iterable[str] = PARTS,
                       progress: Callable[[str], None] = lambda message: None) -> CalibrateResult:
    """Record the feeds of `components` over `parts` of the calibration set at `directory` (None: the
    shipped one) into `out` (`<part>/<component>/NNNN.npz`), then calibration.json / calibration.md."""
    settings = QuantSettings() if samples is None else QuantSettings(samples=samples)
    components = list(components)
    calibration = Calibration(settings, components, graphs, directory, out, progress)
    statistics: dict = {}
    for part in parts:
        store = calibration.store(part)
        statistics[part] = {c: feed_statistics(store, c) for c in components if store.count(c)}
    description = calibration.describe()
    description["not_reached"] = {part: [c for c in components if c not in found] for part, found in statistics.items()}
    (out / "calibration.json").write_text(json.dumps({"set": description, "statistics": statistics}, indent=2,
                                                     default=float))
    (out / "calibration.md").write_text(_markdown(description, statistics))
    return CalibrateResult(str(out), description, statistics,
                           [str(out / "calibration.json"), str(out / "calibration.md")])


def _g(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _markdown(description: dict, statistics: dict) -> str:
    lines = [f"# Calibration feeds of {description['directory']}", "",
             f"digest `{description['digest'][:16]}`, up to {description['samples']} samples per component. "
             "Feeds recorded by the fp32 pipelines a bundle runs (`toolkit calibrate`); "
             f"`max/p{ABS_PERCENTILE:g}` is how far the largest |x| sits above the {ABS_PERCENTILE:g}th percentile "
             "of |x| (large: a min-max calibrator spends its int8 range on outliers).", ""]
    for part, components in statistics.items():
        recorded = description["recorded"].get(part, {})
        lines += [f"## {part} part ({recorded.get('seconds', '-')} s)", "",
                  "| component | input | samples | shapes | min | max | mean | std | max/p | dtype |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
        for component, inputs in components.items():
            for name, s in inputs.items():
                shapes = "; ".join("x".join(map(str, shape)) for shape in s["shapes"][:3])
                lines.append(f"| {component} | {name} | {s['samples']} | {shapes} | {_g(s.get('min'))} | "
                             f"{_g(s.get('max'))} | {_g(s.get('mean'))} | {_g(s.get('std'))} | "
                             f"{_g(s.get('max_over_percentile'))} | {s['dtype']} |")
        if description["not_reached"][part]:
            lines.append(f"\nNot reached by this part (no feeds): {', '.join(description['not_reached'][part])}")
        lines.append("")
    return "\n".join(lines)
