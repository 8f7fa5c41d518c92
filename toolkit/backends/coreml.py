"""Core ML mlprogram (.mlpackage) for iOS: converted from the PyTorch graph with coremltools, the package
spec checked here (names, types, shape ranges, ops); prediction, and so parity, needs macOS."""
from __future__ import annotations

import platform
import shutil
from importlib import metadata
from pathlib import Path

from ..components import COMPONENTS
from . import base

SETTINGS = {"minimum_deployment_target": "iOS17", "compute_units": "ALL"}
# Weight compression a target may ask per component (`compression = ...`).
COMPRESSIONS = {"none": "weights as computed (fp16 or fp32)",
                "linear8": "8-bit linear (symmetric, per channel) weight quantization",
                "palettize4": "4-bit k-means palettization of the weights",
                "palettize6": "6-bit k-means palettization of the weights",
                "palettize8": "8-bit k-means palettization of the weights"}


@base.per_component
def convert(job, backend: base.Backend, plan) -> dict:
    """torch graph -> jit.trace -> coremltools mlprogram, then the spec check against the declaration."""
    from ..convert.coreml import check_package, convert_coreml, inspect_package
    comp = COMPONENTS[plan.component]
    settings = job.target.settings["coreml"]
    rel = f"models/{comp.name}{backend.suffix}"
    job.progress(f"{comp.name}: Core ML conversion ({plan.precision}, {settings['minimum_deployment_target']}"
                 + (f", {plan.compression}" if plan.compression != "none" else "") + ")")
    try:
        info = convert_coreml(job.reference.exported_graph(comp), comp.inputs, comp.outputs, comp.example(),
                              job.root / rel, plan.precision, settings["minimum_deployment_target"],
                              settings["compute_units"], plan.compression)
    except Exception as e:
        shutil.rmtree(job.root / rel, ignore_errors=True)
        raise base.StageFailed(f"Core ML conversion failed: {type(e).__name__}: {str(e).strip()[:300]}") from e
    inputs, outputs = base.io_entries(comp, info.io)
    package = inspect_package(job.root / rel)
    problems = check_package(package, inputs, outputs, info.io["dims"])
    if problems:
        shutil.rmtree(job.root / rel, ignore_errors=True)
        raise base.StageFailed("the Core ML package does not match the declaration: " + "; ".join(problems))
    declared = base.declared_dims(comp)
    narrowed = [f"{d} {declared[d][0]} -> {v[0]}" for d, v in info.io["dims"].items() if v[0] != declared[d][0]]
    return {"file": rel, "inputs": inputs, "outputs": outputs, "dims": info.io["dims"],
            "checks": {"coreml_spec": {"passed": True, "specification_version": package["specification_version"],
                                       "opset": package["opset"], "op_count": package["op_count"],
                                       "ops": package["ops"], "size_bytes": package["size_bytes"],
                                       "io_names_types_ranges": "match the declaration",
                                       "narrowed_dims": narrowed}},
            "provenance": {"stages": ["torch -> jit.trace -> coremltools mlprogram"] +
                           ([f"weight compression {plan.compression}"] if plan.compression != "none" else []),
                           "seconds": round(info.seconds, 2)}}


def open_runner(path: Path, threads: int | None = None, providers: list[str] | None = None):
    from ..convert.coreml import CoreMLRunner
    return CoreMLRunner(path)


BACKEND = base.Backend(
    name="coreml", description="Core ML mlprogram (.mlpackage)", suffix=".mlpackage",
    # Core ML computes in fp16 or fp32; int8 = W8A8 (calibrated in PyTorch), the others compress weights
    precisions=("fp16", "fp32", "int8", "int8-weights", "palette6", "palette4"),
    ladder={"int8": "int8-weights", "palette4": "palette6", "palette6": "int8-weights", "int8-weights": "fp16",
            "fp16": "fp32"}, settings=SETTINGS, export_from=None, stages=(convert, base.verify),
    packages=("coremltools",), open_runner=open_runner,
    runtime=lambda: f"coremltools {metadata.version('coremltools')} (Core ML)",
    platform_problem=lambda: None if platform.system() == "Darwin" else "Core ML prediction needs macOS",
    options=COMPRESSIONS,
)
