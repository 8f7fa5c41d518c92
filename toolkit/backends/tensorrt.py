"""TensorRT: a TensorRT-ready ONNX (int32 I/O, min/opt/max profiles, operators checked against the
TensorRT version's list) plus the on-device engine build; here it runs on ONNX Runtime."""
from __future__ import annotations

from ..components.registry import COMPONENTS
from . import base
from .onnx import ort_runtime, ort_session
from .quantize import quantize

SETTINGS = {"jetpack": "6.2", "version": "10.3", "workspace_mib": 2048}


@base.per_component
def convert(job, backend: base.Backend, plan) -> dict:
    """TensorRT-ready ONNX from the verified export, refused when an operator is not in the list."""
    import onnx

    from ..convert.tensorrt import check_operators, make_trt_ready, operator_list
    comp = COMPONENTS[plan.component]
    source, row = base.source(job, comp.name, "onnx")
    rel = f"models/{comp.name}{backend.suffix}"
    changed = make_trt_ready(source, job.root / rel)
    ops = operator_list(job.target.settings["tensorrt"]["version"])
    if ops.newer and not job.warned_newer_list:  # never let a check of another version pass for this one
        job.warned_newer_list = True
        job.progress(f"tensorrt: operators are checked against the {ops.label}")
    problems = check_operators(onnx.load(str(job.root / rel)), ops)
    if problems:
        (job.root / rel).unlink()
        raise base.StageFailed(f"not accepted by TensorRT {ops.requested} ({ops.label}): " + "; ".join(problems))
    inputs, outputs = base.io_entries(comp, changed)
    return {"file": rel, "inputs": inputs, "outputs": outputs, "dims": base.declared_dims(comp),
            "checks": {"tensorrt_operators": {"passed": True, "list": ops.label, "list_source": ops.source,
                                              "parser_opsets": list(ops.opsets), "of_target_version": not ops.newer}},
            "provenance": {"stages": ["torch -> onnx", "onnx -> TensorRT-ready onnx (int32 I/O)"],
                           "opset": row["opset"]}}


BACKEND = base.Backend(
    name="tensorrt", description="TensorRT-ready ONNX (int32 I/O, shape profiles, operator-checked) + on-device "
                                 "engine build", suffix=".onnx",
    # fp16 / fp32 engines are built on the device from the fp32 ONNX; int8 from an explicit-quantization
    # (Q/DQ) ONNX, with fp16 for the layers left unquantized
    precisions=("fp16", "fp32", "int8"), ladder={"int8": "fp16", "fp16": "fp32"}, settings=SETTINGS, export_from="onnx", stages=(base.export, quantize, convert, base.verify),
    packages=("onnxruntime",), open_runner=ort_session, runtime=lambda: ort_runtime(" (the TensorRT-ready ONNX)"),
)
