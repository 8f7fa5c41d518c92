"""torch module -> ONNX: export, full check with shape inference, onnxslim, check again.

Two exporters: "dynamo" (`torch.export` + onnxscript, the maintained path; dynamic dimensions
with ranges) and "legacy" (TorchScript tracing, deprecated; kept for graphs the dynamo path
cannot take). The stage knows nothing about the model: it gets a module, example inputs, tensor
names and which input axes are dynamic.
"""
from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir
import onnxslim
import torch
from onnx_ir.passes.common import DeduplicateHashedInitializersPass
from torch import nn

from ..components.spec import Dim, linear_form

EXPORTERS = ("dynamo", "legacy")
# onnxslim folds every constant subgraph by default; a folded result this large is stored in the file
# and costs more in size than it saves in time. (The model is written so that no large constant
# subgraph exists - see the fusion decoder's image attention and memory attention's RoPE tables -
# because quant_pre_process and the .ort conversion fold without a limit.)
FOLD_LIMIT_BYTES = 1 << 20


@dataclass
class OnnxInfo:
    path: str
    exporter: str
    opset: int
    size_bytes: int
    nodes: int
    seconds: float


def _export_dim(expr: str, dims: Mapping[str, Dim], made: dict):
    """A torch.export dimension for `expr` (a name, or linear in one name: a derived dimension)."""
    name, scale, offset = linear_form(expr)
    if name not in made:
        made[name] = torch.export.Dim(name, min=dims[name].min, max=dims[name].max)
    dim = made[name] if scale == 1 else scale * made[name]
    return dim + offset if offset else dim


def _dynamo(module, args, input_names, output_names, dynamic_axes, dims, opset) -> onnx.ModelProto:
    made: dict = {}
    shapes = tuple({axis: _export_dim(e, dims, made) for axis, e in dynamic_axes.get(name, {}).items()} or None
                   for name in input_names)
    program = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                opset_version=opset, dynamic_shapes=shapes, external_data=False, verbose=False)
    return program.model_proto


def _legacy(module, args, input_names, output_names, dynamic_axes, dims, opset) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(module, args, buffer, dynamo=False, input_names=input_names, output_names=output_names,
                      opset_version=opset, do_constant_folding=True,
                      dynamic_axes={name: axes for name, axes in dynamic_axes.items() if axes})
    return onnx.load_from_string(buffer.getvalue())


def _deduplicated(model: onnx.ModelProto) -> onnx.ModelProto:
    """One initializer per distinct tensor: the exporter transposes a weight for each use, and a
    weight used by every layer (the fusion decoder's box MLPs) is stored once per use (8 MiB)."""
    ir_model = onnx_ir.from_proto(model)
    DeduplicateHashedInitializersPass()(ir_model)
    return onnx_ir.to_proto(ir_model)


def check(model: onnx.ModelProto) -> None:
    """ONNX checker with full (strict) shape inference; raises onnx.checker.ValidationError."""
    onnx.checker.check_model(model, full_check=True)


def export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
                output_names: list[str], dynamic_axes: dict[str, dict[int, str]], dims: Mapping[str, Dim],
                path: str | Path, exporter: str, opset: int) -> OnnxInfo:
    """Export `module` called with `args`, check, simplify, check again, save to `path` (one file).

    `dynamic_axes` maps input names to {axis: dimension expression}; `dims` gives each dimension's range.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; known: {EXPORTERS}")
    start = time.perf_counter()
    # Both exporters print progress and deprecation warnings; the job reports its own progress.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with torch.no_grad():
            export = _dynamo if exporter == "dynamo" else _legacy
            model = export(module.eval(), args, input_names, output_names, dynamic_axes, dims, opset)
        check(model)
        model = _deduplicated(onnxslim.slim(model, size_threshold=FOLD_LIMIT_BYTES))
    check(model)
    onnx.save(model, str(path))
    opset_used = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return OnnxInfo(str(path), exporter, opset_used, Path(path).stat().st_size, len(model.graph.node),
                    time.perf_counter() - start)
