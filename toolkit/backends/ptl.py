"""TorchScript lite (.ptl) for the PyTorch lite interpreter: trace, freeze, save for the lite interpreter.
int8 where the lite interpreter has kernels for it (QNNPACK: static int8 of graphs torch.fx traces;
dynamic int8 Linear), else fp32: the quantize stage gates each and the manifest says which was chosen."""
from __future__ import annotations

from pathlib import Path

from ..components.registry import Component
from . import base
from .quantize import quantize


def make(comp: Component, graph, args, path: Path) -> dict:
    from ..convert.ptl_export import export_ptl
    info = export_ptl(graph, args, comp.input_names, comp.output_names, path)
    return {"exporter": "jit.trace+freeze", "opset": None, "export_seconds": info.seconds}


def open_runner(path: Path, threads: int | None = None, providers: list[str] | None = None):
    from ..runners.ptl_runner import PtlRunner
    return PtlRunner(path)


def runtime() -> str:
    import torch
    return f"torch {torch.__version__} lite interpreter"


BACKEND = base.Backend(
    name="ptl", description="TorchScript lite (.ptl) for the PyTorch lite interpreter", suffix=".ptl",
    # the lite interpreter has int8 kernels (QNNPACK) but no fp16 CPU kernels
    precisions=("fp32", "int8", "int8-weights"), ladder={"int8": "int8-weights", "int8-weights": "fp32"},
    settings={}, export_from="ptl", stages=(base.export, quantize, base.copy, base.verify),
    packages=("torch",), open_runner=open_runner, runtime=runtime,
    exporter=base.Exporter(make, lambda c: {"exporter": "jit.trace+freeze", "lite": True},
                           lambda c: "TorchScript lite: trace, freeze, save for the lite interpreter "
                                     "(optimize_for_mobile fails on this CPU wheel, built without XNNPACK)"),
)
