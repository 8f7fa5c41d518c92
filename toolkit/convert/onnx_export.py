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
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxslim
import torch
from torch import nn

from ..spec import Dim

EXPORTERS = ("dynamo", "legacy")


@dataclass
class OnnxInfo:
    path: str
    exporter: str
    opset: int
    size_bytes: int
    nodes: int
    seconds: float


def _dynamo(module, args, input_names, output_names, dynamic_axes, opset) -> onnx.ModelProto:
    dims = {d.name: torch.export.Dim(d.name, min=d.min, max=d.max)
            for axes in dynamic_axes.values() for d in axes.values()}
    shapes = tuple({axis: dims[d.name] for axis, d in dynamic_axes.get(name, {}).items()} or None
                   for name in input_names)
    program = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                opset_version=opset, dynamic_shapes=shapes, external_data=False, verbose=False)
    return program.model_proto


def _legacy(module, args, input_names, output_names, dynamic_axes, opset) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(module, args, buffer, dynamo=False, input_names=input_names, output_names=output_names,
                      opset_version=opset, do_constant_folding=True,
                      dynamic_axes={name: {axis: d.name for axis, d in axes.items()}
                                    for name, axes in dynamic_axes.items() if axes})
    return onnx.load_from_string(buffer.getvalue())


def check(model: onnx.ModelProto) -> None:
    """ONNX checker with full (strict) shape inference; raises onnx.checker.ValidationError."""
    onnx.checker.check_model(model, full_check=True)


def export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
                output_names: list[str], dynamic_axes: dict[str, dict[int, Dim]], path: str | Path,
                exporter: str, opset: int) -> OnnxInfo:
    """Export `module` called with `args`, check, simplify, check again, save to `path` (one file)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; known: {EXPORTERS}")
    start = time.perf_counter()
    # Both exporters print progress and deprecation warnings; the job reports its own progress.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with torch.no_grad():
            export = _dynamo if exporter == "dynamo" else _legacy
            model = export(module.eval(), args, input_names, output_names, dynamic_axes, opset)
        check(model)
        model = onnxslim.slim(model)
    check(model)
    onnx.save(model, str(path))
    opset_used = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return OnnxInfo(str(path), exporter, opset_used, Path(path).stat().st_size, len(model.graph.node),
                    time.perf_counter() - start)
