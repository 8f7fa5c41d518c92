"""ONNX (.onnx) for ONNX Runtime: the dynamo export, checked and simplified, shipped as exported."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from ..components.registry import Component
from . import base
from .quantize import quantize


def make(comp: Component, graph, args, path: Path) -> dict:
    from ..components.spec import DIMS
    from ..convert.onnx_export import export_onnx
    info = export_onnx(graph, args, comp.input_names, comp.output_names, comp.dynamic_axes(), DIMS, path,
                       comp.onnx.exporter, comp.onnx.opset)
    return {"exporter": info.exporter, "opset": info.opset, "nodes": info.nodes, "export_seconds": info.seconds}


def ort_session(path: Path, threads: int | None = None, providers: list[str] | None = None):
    from ..runners.ort_runner import OrtRunner
    return OrtRunner(path, providers=providers, threads=threads)


def ort_runtime(what: str = "") -> str:
    return f"onnxruntime {metadata.version('onnxruntime')} CPU{what}"


BACKEND = base.Backend(
    name="onnx", description="ONNX (.onnx) for ONNX Runtime", suffix=".onnx",
    precisions=("fp32", "int8", "int8-weights", "mixed-weights", "int16-weights", "int4-weights", "fp16"),
    ladder={"int8": "int8-weights", "int4-weights": "int8-weights", "int8-weights": "mixed-weights",
            "mixed-weights": "int16-weights",
            "int16-weights": "fp32", "fp16": "fp32"},
    settings={}, export_from="onnx", stages=(base.export, quantize, base.copy, base.verify), packages=("onnxruntime",),
    open_runner=ort_session, runtime=ort_runtime,
    exporter=base.Exporter(make, lambda c: {"exporter": c.onnx.exporter, "opset": c.onnx.opset,
                                            "simplifier": "onnxslim"},
                           lambda c: c.onnx.reason),
)
