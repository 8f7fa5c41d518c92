"""TorchScript lite quantization stage (torch.ao.quantization, QNNPACK: the engine of arm phones).

What the lite interpreter runs, checked on this torch 2.13 CPU wheel (tests/test_quantize.py
loads every artifact back with `_load_for_lite_interpreter` and compares it with its source):

- **int8** (static): `quantized::conv2d`, `quantized::linear`, quantized add / relu / cat ... with
  prepacked QNNPACK weights. Made in FX graph mode: `prepare_fx` with the QNNPACK default qconfig
  (per-tensor affine uint8 activations, int8 weights), the recorded calibration feeds run through
  it, `convert_fx`; then trace, freeze, save for the lite interpreter. The activation observer
  follows the `[quantization]` method: `minmax` -> MinMaxObserver (also observes integer inputs,
  which HistogramObserver refuses, and is ~10x faster on 1008x1008 maps); `entropy` / `percentile`
  -> the default HistogramObserver (it picks the range minimising the histogram's quantization
  error: PyTorch has no entropy or percentile observer). `keep_float` names ONNX operator types;
  those with a PyTorch counterpart (`FX_OPS`: Add, Mul, MatMul, Gemm, Conv, ConvTranspose, Concat)
  get no qconfig, so FX leaves them in float between dequantize / quantize (e.g. an Add whose
  operand scales QNNPACK refuses: it takes output/input scale ratios in [2^-14, 2^8) only). Needs a graph torch.fx can
  trace symbolically; one it cannot is refused with the reason (the ladder steps down).
  Operators without a quantized kernel (attention softmax, layer norm, GELU, ...) run in float
  between dequantize / quantize pairs that FX inserts.
- **int8-weights** (dynamic): `quantize_dynamic` of every nn.Linear (`quantized::linear_dynamic`:
  int8 weights, activations quantized per call); convolutions stay float. Works on any module.
- **fp32**: the graph as is. fp16 is not a lite-interpreter precision (no fp16 CPU kernels on
  mobile): not offered.

The packed weights belong to the engine they were packed for: artifacts are made with the
QNNPACK engine and must run with `torch.backends.quantized.engine = "qnnpack"` (the default on
arm builds; `use_qnnpack()` sets it here).
"""
from __future__ import annotations

import contextlib
import copy
import operator
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .gate import QuantSettings
from .stage import QuantizeError, StageResult, size_of

ENGINE = "qnnpack"
# ONNX operator type (the [quantization] keep_float vocabulary) -> the PyTorch modules / functions FX maps
FX_OPS = {"Add": (operator.add, torch.add), "Mul": (operator.mul, torch.mul), "MatMul": (torch.matmul, torch.bmm),
          "Gemm": (nn.Linear, nn.functional.linear), "Conv": (nn.Conv1d, nn.Conv2d, nn.functional.conv2d),
          "ConvTranspose": (nn.ConvTranspose2d, nn.functional.conv_transpose2d), "Concat": (torch.cat,)}


@contextlib.contextmanager
def use_qnnpack():
    """Run (and pack) quantized kernels with QNNPACK inside the block."""
    if ENGINE not in torch.backends.quantized.supported_engines:
        raise QuantizeError(f"this torch build has no {ENGINE} engine (has "
                            f"{', '.join(torch.backends.quantized.supported_engines)})")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = ENGINE
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _args(names, feeds: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names)


def _op_counts(module: torch.jit.ScriptModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in module.inlined_graph.nodes():
        kind = node.kind()
        if kind.startswith(("aten::", "quantized::")):
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def quantize_ptl(graph: nn.Module, input_names: list[str], output_names: list[str],
                 example: Mapping[str, np.ndarray], dst: str | Path, precision: str,
                 settings: QuantSettings | None = None,
                 feeds: Iterable[Mapping[str, np.ndarray]] | None = None) -> StageResult:
    """The `.ptl` of `graph` at `precision` (int8 | int8-weights | fp32), traced on `example`."""
    from ..convert.ptl_export import export_ptl
    settings = settings or QuantSettings()
    dst = Path(dst)
    start = time.perf_counter()
    args = _args(input_names, example)
    notes: list[str] = [f"quantized engine {ENGINE}: run with torch.backends.quantized.engine = '{ENGINE}'"]
    with use_qnnpack(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if precision == "int8":
            if feeds is None:
                raise QuantizeError("int8 needs calibration feeds")
            module, used = _static(graph, input_names, args, feeds, settings)
            method = f"static int8 (FX graph mode, QNNPACK qconfig) on {used['samples']} samples"
        elif precision == "int8-weights":
            module = torch.ao.quantization.quantize_dynamic(copy.deepcopy(graph).eval(), {nn.Linear}, dtype=torch.qint8)
            if not any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in module.modules()):
                raise QuantizeError("no nn.Linear: dynamic int8 would change nothing")
            used = {"modules": ["Linear"], "weight_dtype": "qint8", "activations": "quantized per call"}
            method = "dynamic int8 (nn.Linear weights int8, activations quantized per call)"
        elif precision == "fp32":
            module, used, method = graph, {}, "fp32"
        else:
            raise QuantizeError(f"precision {precision!r} is not a TorchScript lite precision (int8, int8-weights, "
                                "fp32)")
        export_ptl(module, args, input_names, output_names, dst)
        with torch.no_grad():
            operators = _op_counts(torch.jit.freeze(torch.jit.trace(module.eval(), args, check_trace=False)))
    unmapped = [k for k in settings.keep_float if k not in FX_OPS]
    if unmapped and precision == "int8":
        notes.append(f"keep_float {unmapped}: no PyTorch counterpart in FX_OPS, not applied")
    kept = used.pop("kept_float", [])
    return StageResult(dst, "ptl", precision, method, {"engine": ENGINE, **used}, kept, operators,
                       time.perf_counter() - start, size_of(dst), 0, notes)


def _qconfig_mapping(method: str, keep_float: tuple[str, ...] = ()):
    """QNNPACK's default mapping, with MinMaxObserver in place of HistogramObserver for `minmax`
    (fixed-parameter ops such as sigmoid keep their fixed observers), and no qconfig for the
    `keep_float` operator types."""
    from torch.ao.quantization import MinMaxObserver, QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver
    mapping = get_default_qconfig_mapping(ENGINE)
    for kind in (k for name in keep_float for k in FX_OPS.get(name, ())):
        mapping.set_object_type(kind, None)
    if method != "minmax":
        return mapping

    def minmax(qconfig):
        if qconfig is None or getattr(qconfig.activation, "p", None) is None:
            return qconfig
        if qconfig.activation.p.func is not HistogramObserver:
            return qconfig
        return QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False),
                       weight=qconfig.weight)
    mapping.set_global(minmax(mapping.global_qconfig))
    for kind, qconfig in list(mapping.object_type_qconfigs.items()):
        mapping.set_object_type(kind, minmax(qconfig))
    return mapping


def _static(graph: nn.Module, input_names, args, feeds, settings: QuantSettings) -> tuple[nn.Module, dict]:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    method = settings.method
    try:
        prepared = prepare_fx(copy.deepcopy(graph).eval(), _qconfig_mapping(method, settings.keep_float), args)
    except Exception as err:  # symbolic tracing fails in many ways on data-dependent graphs
        raise QuantizeError(f"torch.fx cannot trace the graph for static int8 "
                            f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from err
    seen = 0
    with torch.no_grad():
        for sample in feeds:
            prepared(*_args(input_names, sample))
            seen += 1
    if not seen:
        raise QuantizeError("int8 needs calibration feeds; none were given")
    observer = "MinMaxObserver" if method == "minmax" else "HistogramObserver"
    return convert_fx(prepared).eval(), {"qconfig": f"default {ENGINE}, activations observed by {observer}",
                                         "kept_float": [k for k in settings.keep_float if k in FX_OPS],
                                         "samples": seen}
