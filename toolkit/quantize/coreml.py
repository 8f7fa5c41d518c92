"""Core ML quantization stages (coremltools 9), made on Linux where Core ML cannot predict.

Core ML prediction needs macOS, so every precision is made in two forms: the `.mlpackage`
artifact, and a PyTorch **simulation** (`StageResult.simulation`: a module with the component's
inputs and outputs that computes what the program computes, up to the float16 compute of the
Core ML runtime), on which the accuracy gate measures here. Numeric parity of the package itself
stays the macOS job (scripts/macos_parity.py).

- **int8** (W8A8): `coremltools.optimize.torch.quantization.LinearQuantizer` (symmetric, int8
  per-channel weights, uint8 activations observed by moving-average min-max): `prepare` on the
  graph, the recorded calibration feeds run through it in eval mode, `finalize`; the finalized
  module (fake-quantized: it is the simulation) is traced and converted, giving `quantize` /
  `dequantize` around activations and `constexpr_affine_dequantize` weights. `prepare` traces the
  graph with torch.fx: a graph fx cannot trace cannot take this route (the stage says so and the
  ladder steps down). coremltools' `linear_quantize_activations` on a converted program does not
  work on Linux (it predicts to calibrate).
- **int8-weights** / **palette6** / **palette4**: the converted fp16 program compressed with
  `coremltools.optimize.coreml` (`linear_quantize_weights`, linear symmetric per-channel int8;
  `palettize_weights`, k-means with 2^n entries per tensor; needs scikit-learn), as
  toolkit.convert.coreml does for a target's `compression`. Simulation: the same algorithms on the
  PyTorch weights (`PostTrainingQuantizer` / `PostTrainingPalettizer` of
  coremltools.optimize.torch); k-means clusters may differ slightly between the two.
- **fp16** / **fp32**: the plain conversion; the fp16 simulation runs the graph in float16.
"""
from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .gate import QuantSettings
from .stage import QuantizeError, StageResult, size_of

COMPRESSION = {"int8-weights": "linear8", "palette6": "palettize6", "palette4": "palettize4"}


class _Half(nn.Module):
    """The graph computing in float16 (float inputs cast in, float outputs cast back)."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(graph).half().eval()

    def forward(self, *args):
        out = self.inner(*(a.half() if a.is_floating_point() else a for a in args))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(y.float() if y.is_floating_point() else y for y in out)


def _quiet():
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    # coremltools.optimize.torch sets its own logger to INFO when first imported (k-means progress per tensor)
    import coremltools.optimize.torch  # noqa: F401
    logging.getLogger("coremltools.optimize.torch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="coremltools")


def _args(specs, feeds: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in specs)


def weight_simulation(graph: nn.Module, precision: str) -> nn.Module:
    """A copy of `graph` with weights compressed as the Core ML weight-only precision does."""
    _quiet()
    module = copy.deepcopy(graph).eval()
    if precision == "int8-weights":
        from coremltools.optimize.torch.quantization import PostTrainingQuantizer, PostTrainingQuantizerConfig
        config = PostTrainingQuantizerConfig.from_dict({"global_config": {
            "weight_dtype": "int8", "granularity": "per_channel", "quantization_scheme": "symmetric"}})
        return PostTrainingQuantizer(module, config).compress().eval()
    if precision in ("palette4", "palette6"):
        from coremltools.optimize.torch.palettization import PostTrainingPalettizer, PostTrainingPalettizerConfig
        config = PostTrainingPalettizerConfig.from_dict({"global_config": {
            "n_bits": int(precision[-1]), "granularity": "per_tensor"}})
        return PostTrainingPalettizer(module, config).compress().eval()
    raise ValueError(f"{precision} is not a weight-only precision")


def w8a8_simulation(graph: nn.Module, specs, feeds: Iterable[Mapping[str, np.ndarray]],
                    example: Mapping[str, np.ndarray]) -> tuple[nn.Module, int]:
    """LinearQuantizer prepare -> calibrate on `feeds` -> finalize: the W8A8 module and the number
    of calibration samples it saw."""
    _quiet()
    from coremltools.optimize.torch.quantization import LinearQuantizer, LinearQuantizerConfig
    config = LinearQuantizerConfig.from_dict({"global_config": {
        "quantization_scheme": "symmetric", "weight_per_channel": True,
        "weight_dtype": "qint8", "activation_dtype": "quint8"}})
    quantizer = LinearQuantizer(copy.deepcopy(graph).eval(), config)
    try:
        prepared = quantizer.prepare(example_inputs=_args(specs, example), inplace=True)
    except Exception as err:  # fx tracing fails in many ways on data-dependent graphs
        raise QuantizeError(f"LinearQuantizer.prepare cannot trace the graph with torch.fx "
                            f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from err
    prepared.eval()
    seen = 0
    with torch.no_grad():
        for sample in feeds:
            prepared(*_args(specs, sample))
            seen += 1
    if not seen:
        raise QuantizeError("W8A8 needs calibration feeds; none were given")
    return quantizer.finalize(inplace=True).eval(), seen


@dataclass
class Simulation:
    """What the gate measures for a Core ML precision on Linux: `module` computes what the package
    computes (see the module docstring); `method` / `settings` describe it for the manifest."""

    module: nn.Module
    method: str
    settings: dict


WEIGHT_METHODS = {"int8-weights": "weight-only linear int8 (symmetric, per channel), fp16 compute",
                  "palette6": "6-bit k-means palettized weights, fp16 compute",
                  "palette4": "4-bit k-means palettized weights, fp16 compute"}


def simulate(graph: nn.Module, inputs, example: Mapping[str, np.ndarray], precision: str,
             feeds: Iterable[Mapping[str, np.ndarray]] | None = None) -> Simulation:
    """The PyTorch simulation of `graph` at Core ML `precision` (int8 needs calibration `feeds`)."""
    if precision == "int8":
        if feeds is None:
            raise QuantizeError("W8A8 needs calibration feeds")
        module, seen = w8a8_simulation(graph, inputs, feeds, example)
        return Simulation(module, f"W8A8: LinearQuantizer (symmetric, per-channel int8 weights, uint8 activations) "
                                  f"on {seen} samples, fp16 compute",
                          {"scheme": "symmetric", "weight_dtype": "int8", "weight_per_channel": True,
                           "activation_dtype": "uint8", "observer": "moving_average_min_max", "samples": seen})
    if precision in COMPRESSION:
        return Simulation(weight_simulation(graph, precision), WEIGHT_METHODS[precision],
                          {"compression": COMPRESSION[precision]})
    if precision in ("fp16", "fp32"):
        return Simulation(_Half(graph) if precision == "fp16" else graph, f"{precision} compute", {})
    raise QuantizeError(f"precision {precision!r} is not a Core ML precision")


def quantize_coreml(graph: nn.Module, inputs, outputs, example: Mapping[str, np.ndarray], dst: str | Path,
                    precision: str, settings: QuantSettings | None = None,
                    feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
                    deployment_target: str = "iOS17") -> StageResult:
    """Make the Core ML package of `graph` (declared `inputs` / `outputs` TensorSpecs, traced on
    `example`) at `precision` (int8 | int8-weights | palette6 | palette4 | fp16 | fp32); returns the
    StageResult with `simulation` set (see the module docstring)."""
    from ..convert.coreml import convert_coreml, inspect_package
    settings = settings or QuantSettings()
    dst = Path(dst)
    start = time.perf_counter()
    _quiet()
    notes = ["Core ML prediction needs macOS: figures here are measured on the PyTorch simulation"]
    simulation = simulate(graph, inputs, example, precision, feeds)
    # W8A8: the finalized (fake-quantized) simulation is what is converted; weight-only precisions
    # compress the converted fp16 program with coremltools' own algorithms
    source = simulation.module if precision == "int8" else graph
    convert_coreml(source, inputs, outputs, example, dst, precision="fp32" if precision == "fp32" else "fp16",
                   deployment_target=deployment_target, compression=COMPRESSION.get(precision, "none"))
    info = inspect_package(dst)
    if settings.keep_float:
        notes.append(f"keep_float {list(settings.keep_float)} names ONNX operator types: not applied to Core ML")
    return StageResult(dst, "coreml", precision, simulation.method,
                       {"deployment_target": deployment_target, **simulation.settings}, [], info["ops"],
                       time.perf_counter() - start, size_of(dst), 0, notes, simulation=simulation.module)
