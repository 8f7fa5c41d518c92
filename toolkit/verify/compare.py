"""Verification: run runners on the same feeds and compare their outputs with the reference's.

Per output: shape against the declared spec, max absolute error, error relative to the largest
reference magnitude, and for mask-logit outputs the IoU of the thresholded masks (> 0) over all
masks of the tensor, leaving out pixels within float error of the threshold (their flips are counted). Bool and integer outputs must match exactly. A failure names the component,
the artifact format, the input case and the tensor.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor, nn

from ..components.registry import COMPONENTS, Component, Models, build_graph, golden_feeds, load_models
from ..convert.reparam import reparameterize
from ..runners import Runner
from ..runners.torch_runner import TorchRunner
from .golden import golden_available, golden_dir

Feeds = dict[str, np.ndarray]


@dataclass
class TensorCheck:
    case: str
    tensor: str
    max_abs: float
    max_rel: float
    iou: float | None
    ok: bool
    problem: str = ""
    outliers: float = 0.0  # fraction of elements beyond the tolerance
    threshold_flips: int = 0  # mask pixels on the other side of 0 whose reference is within float error of 0


@dataclass
class Verification:
    component: str
    format: str
    checks: list[TensorCheck] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def cases(self) -> list[str]:
        return list(dict.fromkeys(c.case for c in self.checks))

    def summary(self) -> dict:
        ious = [c.iou for c in self.checks if c.iou is not None]
        return {"ok": self.ok, "cases": self.cases,
                "max_abs_error": max((c.max_abs for c in self.checks), default=None),
                "max_rel_error": max((c.max_rel for c in self.checks), default=None),
                "min_mask_iou": min(ious) if ious else None,
                "max_outlier_fraction": max((c.outliers for c in self.checks), default=None),
                "threshold_flips": sum(c.threshold_flips for c in self.checks),
                "failures": self.failures}


def cases(comp: Component, golden: Feeds | None, seed: int = 0) -> dict[str, Feeds]:
    """The inputs an artifact is checked on: the golden-derived feeds, a typical random input, every
    dynamic dimension at its minimum, and each at its maximum with the others at their minimum.
    A case is named by the dimension values it sets ("boxes=0", "memory_frames=7")."""
    out = {"golden": golden} if golden is not None else {}
    out["typical"] = comp.example(seed=seed)
    low = {d.name: d.min for d in comp.dims()}
    if low:
        out[",".join(f"{k}={v}" for k, v in low.items())] = comp.example(low, seed=seed + 1)
    for dim in comp.dims():
        out[f"{dim.name}={dim.max}"] = comp.example({**low, dim.name: dim.max}, seed=seed + 2)
    return out


def run_cases(runner: Runner, inputs: Mapping[str, Feeds]) -> dict[str, Feeds | Exception]:
    """Outputs per case; a case whose run raises keeps the exception (reported, not raised)."""
    results: dict[str, Feeds | Exception] = {}
    for name, feeds in inputs.items():
        try:
            results[name] = runner.infer(feeds)
        except Exception as e:  # noqa: BLE001 - any backend error is a verification failure
            results[name] = e
    return results


def mask_agreement(ref: np.ndarray, got: np.ndarray, margin: float) -> tuple[float, int]:
    """IoU of (got > 0) and (ref > 0) over the pixels whose reference logit is farther than `margin`
    from the threshold, and the number of pixels within `margin` that flipped. A logit within float
    error of 0 lands on either side depending on the CPU and runtime, so counting it would make the
    IoU ill-conditioned on noise-like masks; the flips near 0 are reported apart instead."""
    a, b = ref > 0, got > 0
    confident = np.abs(ref) > margin
    union = np.logical_or(a, b)[confident].sum()
    iou = 1.0 if union == 0 else float(np.logical_and(a, b)[confident].sum() / union)
    return iou, int((a != b)[~confident].sum())


def compare_tensor(case: str, name: str, ref: np.ndarray, got: np.ndarray, shape: tuple[int, ...],
                   comp: Component) -> TensorCheck:
    if tuple(got.shape) != tuple(shape) or got.shape != ref.shape:
        return TensorCheck(case, name, np.inf, np.inf, None, False,
                           f"shape {tuple(got.shape)}, expected {tuple(shape)} (reference {tuple(ref.shape)})")
    if ref.dtype == bool or np.issubdtype(ref.dtype, np.integer):
        wrong = int((ref != got).sum())
        return TensorCheck(case, name, float(wrong > 0), float(wrong > 0), None, wrong == 0,
                           f"{wrong} of {ref.size} values differ" if wrong else "")
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    if not np.isfinite(got64).all() and not np.array_equal(np.isfinite(got64), np.isfinite(ref64)):
        return TensorCheck(case, name, np.inf, np.inf, None, False, "non-finite values the reference lacks")
    scale = float(np.abs(ref64).max()) if ref.size else 0.0
    max_abs = float(np.abs(got64 - ref64).max()) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    tol = comp.tolerance
    allowed = tol.atol + tol.rtol * scale
    outliers = float((np.abs(got64 - ref64) > allowed).mean()) if ref.size else 0.0
    problems = []
    if outliers > tol.outliers:
        share = f" at {outliers:.2%} of the values (allowed {tol.outliers:.2%})" if tol.outliers else ""
        problems.append(f"max abs error {max_abs:.3g} > {allowed:.3g} (atol {tol.atol:g} + rtol {tol.rtol:g} "
                        f"x max|ref| {scale:.3g}){share}")
    iou, flips = mask_agreement(ref64, got64, allowed) if name in comp.masks else (None, 0)
    if iou is not None and iou < tol.mask_iou:
        problems.append(f"mask IoU {iou:.4f} < {tol.mask_iou} (pixels farther than {allowed:.3g} from 0)")
    return TensorCheck(case, name, max_abs, max_rel, iou, not problems, "; ".join(problems), outliers, flips)


def compare(comp: Component, fmt: str, inputs: Mapping[str, Feeds], reference: Mapping[str, Feeds],
            candidate: Mapping[str, Feeds | Exception]) -> Verification:
    result = Verification(comp.name, fmt)
    for case, feeds in inputs.items():
        got = candidate[case]
        if isinstance(got, Exception):
            result.failures.append(f"{comp.name} [{fmt}] case '{case}': the runner failed: "
                                   f"{type(got).__name__}: {str(got).strip().splitlines()[0] if str(got).strip() else ''}")
            continue
        shapes = comp.output_shapes(feeds)
        for name in comp.output_names:
            if name not in got:
                result.failures.append(f"{comp.name} [{fmt}] case '{case}': output '{name}' is missing")
                continue
            check = compare_tensor(case, name, reference[case][name], got[name], shapes[name], comp)
            result.checks.append(check)
            if not check.ok:
                result.failures.append(f"{comp.name} [{fmt}] case '{case}': output '{name}': {check.problem}")
    return result


class _Graphs(Mapping):
    """Component name -> PyTorch graph, each built on first access."""

    def __init__(self, models: Models):
        self.models, self._built = models, {}

    def __getitem__(self, name: str) -> nn.Module:
        if name not in self._built:
            self._built[name] = build_graph(self.models, COMPONENTS[name])
        return self._built[name]

    def __iter__(self):
        return iter(COMPONENTS)

    def __len__(self) -> int:
        return len(COMPONENTS)


class Reference:
    """The PyTorch model artifacts are checked against, and the cases, built on first need: a graph
    when its component is checked, the golden-derived inputs of the `components` to be checked (all
    by default) by walking the chains only as far as they need. Without the golden fixture the
    golden-derived case is left out (the others are generated from the specs)."""

    def __init__(self, state: Mapping[str, Tensor], golden: bool | None = None,
                 progress: Callable[[str], None] = lambda message: None, components: Iterable[str] | None = None):
        self.golden = golden_available() if golden is None else golden
        self._say_no_golden = golden is None and not self.golden
        self.state, self.progress = state, progress
        self.components = list(COMPONENTS if components is None else components)
        self.graphs = _Graphs(load_models(state))
        self._golden: dict | None = None
        self._cases: dict[str, dict] = {}
        self._outputs: dict[str, dict] = {}

    def exported_graph(self, comp: Component) -> nn.Module:
        """The graph as the exporters see it (re-parameterised where the component says so)."""
        graph = self.graphs[comp.name]
        return reparameterize(graph) if comp.reparameterize else graph

    def inputs(self, comp: Component) -> dict[str, dict[str, np.ndarray]]:
        if comp.name not in self._cases:
            if self.golden and self._golden is None:
                self.progress("computing golden-derived inputs (the PyTorch model on the golden fixture)")
                self._golden = golden_feeds(self.graphs, {*self.components, comp.name})
            elif self.golden and comp.name not in self._golden:
                self._golden.update(golden_feeds(self.graphs, {comp.name}))
            if self._say_no_golden:
                self.progress(f"no golden fixture at {golden_dir()}: artifacts are checked on generated inputs")
                self._say_no_golden = False
            self._cases[comp.name] = cases(comp, self._golden[comp.name] if self.golden else None)
        return self._cases[comp.name]

    def runner(self, name: str) -> TorchRunner:
        """The fp32 PyTorch reference of a component as a runner (what artifacts and gates compare with)."""
        return COMPONENTS[name].torch_runner(self.graphs[name])

    def forget(self, comp: Component) -> None:
        """Drop a component's cases and reference outputs (the big ones are ~100 MB per case)."""
        self._cases.pop(comp.name, None)
        self._outputs.pop(comp.name, None)

    def outputs(self, comp: Component) -> dict[str, dict[str, np.ndarray]]:
        if comp.name not in self._outputs:
            inputs = self.inputs(comp)
            self.progress(f"{comp.name}: PyTorch reference on {len(inputs)} cases ({', '.join(inputs)})")
            self._outputs[comp.name] = run_cases(self.runner(comp.name), inputs)
        return self._outputs[comp.name]
