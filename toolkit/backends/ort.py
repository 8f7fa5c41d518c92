"""ONNX Runtime Mobile format (.ort): the verified ONNX through ONNX Runtime's own converter, all
components of a bundle in one conversion (one required_operators.config for a reduced-operator build)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..components.registry import COMPONENTS, Component
from . import base
from .onnx import make as make_onnx
from .onnx import ort_runtime, ort_session
from .quantize import quantize

SETTINGS = {"target_platform": "arm", "optimization_style": "Fixed"}


def make(comp: Component, graph, args, path: Path) -> dict:
    """The ONNX export, then the converter (what the android target ships; `toolkit export --format ort`
    makes it so that `toolkit bench` can time ONNX Runtime on .ort files)."""
    from ..convert.ort_mobile import convert_to_ort
    with tempfile.TemporaryDirectory(prefix=f".{comp.name}-ort-", dir=path.parent) as tmp:
        source = Path(tmp) / f"{comp.name}.onnx"
        info = make_onnx(comp, graph, args, source)
        converted = convert_to_ort({comp.name: source}, Path(tmp) / "ort")
        os.replace(converted.files[comp.name], path)
    return {**info, "exporter": f"{info['exporter']} + ORT converter",
            "export_seconds": info["export_seconds"] + converted.seconds}


def convert(job, backend: base.Backend, plans: list) -> base.Failures:
    """Every .ort of the bundle in one conversion."""
    from ..convert.ort_mobile import convert_to_ort
    sources, failures = {}, {}
    for plan in plans:
        try:
            sources[plan.component] = base.source(job, plan.component, "onnx")[0]
        except base.StageFailed as e:
            failures[plan.component] = str(e)
    if not sources:
        return failures
    settings = job.target.settings["ort"]
    job.progress(f"ort: converting {len(sources)} models to the ONNX Runtime Mobile format "
                 f"(target_platform={settings['target_platform']}, {settings['optimization_style']})")
    try:
        conversion = convert_to_ort(sources, job.root / "models", settings["target_platform"],
                                    settings["optimization_style"])
    except Exception as e:  # noqa: BLE001 - the converter failing moves these components to the fallback
        reason = f"ONNX Runtime Mobile conversion failed: {type(e).__name__}: {str(e).strip()[:300]}"
        return {**failures, **dict.fromkeys(sources, reason)}
    os.replace(conversion.config, job.root / "required_operators.config")
    for name, path in conversion.files.items():
        comp = COMPONENTS[name]
        inputs, outputs = base.io_entries(comp)
        job.entries[name] = {
            "file": f"models/{path.name}", "inputs": inputs, "outputs": outputs, "dims": base.declared_dims(comp),
            "provenance": {"stages": ["torch -> onnx", "onnx -> ort ({optimization_style}, {target_platform})"
                                      .format(**settings)], "convert_seconds": round(conversion.seconds, 2)}}
    return failures


BACKEND = base.Backend(
    name="ort", description="ONNX Runtime Mobile format (.ort) + required_operators.config for a reduced-operator "
                            "build", suffix=".ort", settings=SETTINGS,
    # no fp16: ONNX Runtime Mobile's CPU kernels compute fp16 graphs slower than fp32 (Casts around most ops)
    precisions=("fp32", "int8", "int8-weights", "mixed-weights", "int16-weights", "int4-weights"),
    ladder={"int8": "int8-weights", "int4-weights": "int8-weights", "int8-weights": "mixed-weights",
            "mixed-weights": "int16-weights",
            "int16-weights": "fp32"}, export_from="onnx",
    stages=(base.export, quantize, convert, base.verify), packages=("onnxruntime",), open_runner=ort_session,
    runtime=lambda: ort_runtime(" (.ort)"),
    exporter=base.Exporter(make, lambda c: {"exporter": c.onnx.exporter, "opset": c.onnx.opset,
                                            "simplifier": "onnxslim", "ort": SETTINGS},
                           lambda c: f"{c.onnx.reason}; then ONNX Runtime's converter (optimisations saved, "
                                     "arm target)"),
)
