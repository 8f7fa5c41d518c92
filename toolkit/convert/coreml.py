"""torch -> Core ML stage: a component's graph to an mlprogram `.mlpackage`.

`torch.jit.trace` then `coremltools.convert(convert_to="mlprogram")` at the target's deployment
target and compute precision (the `torch.export` route fails on RepViT: non-contiguous dim order).
Inputs and outputs carry the declaration's names; each dynamic dimension becomes one
`RangeDim` shared by every input that uses it. Core ML has no bool or int64 tensors, no rank-0
inputs and no zero-size dimensions, so the traced graph is wrapped: bool and int64 inputs arrive
as int32, rank-0 inputs as shape (1,), bool and int64 outputs leave as int32, and a dimension whose
declared minimum is 0 starts at 1. `artifact_io` returns those differences for the manifest;
float inputs and outputs stay float32 (the compute is fp16 inside).

Prediction needs macOS. `inspect_package` reads the saved spec back (names, types, shape ranges,
op counts, size) and `check_package` compares it with the declaration, which is what can be
checked here; `CoreMLRunner` runs a package where Core ML exists (macOS), for parity.
"""
from __future__ import annotations

import collections
import logging
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..components.spec import DIMS, TensorSpec, linear_form
from ..errors import ToolkitError
from ..runners.base import Runner

logging.getLogger("coremltools").setLevel(logging.ERROR)  # per-op progress and version chatter
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

_CT_DTYPES = {"float32": np.float32, "int32": np.int32}
_SPEC_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32"}  # ArrayFeatureType codes


# --- converter fixes for coremltools 9.0 ----------------------------------------------------------
# coremltools 9.0 casts a folded shape value with `int(array)`, which numpy >= 2.4 refuses for a
# 1-element array of rank 1 (traced `x.shape[i] // n`), and fills `new_zeros(())` with a float
# shape. Both converters are re-registered with the cases handled; everything else is unchanged.

def _scalar_cast(context, node, dtype, dtype_name: str) -> None:
    x = _get_inputs(context, node, expected=1)[0]
    if x.can_be_folded_to_const():
        res = mb.const(val=dtype(np.asarray(x.val).reshape(()).item()), name=node.name)
    else:
        if len(x.shape) > 0:
            x = mb.squeeze(x=x, name=node.name + "_item")
        res = mb.cast(x=x, dtype=dtype_name, name=node.name)
    context.add(res, node.name)


@register_torch_op(torch_alias=["int"], override=True)
def _int(context, node):
    _scalar_cast(context, node, int, "int32")


@register_torch_op(torch_alias=["bool"], override=True)
def _bool(context, node):
    _scalar_cast(context, node, bool, "bool")


@register_torch_op(torch_alias=["new_empty"], override=True)
def new_zeros(context, node):
    shape = _get_inputs(context, node)[1]
    if isinstance(shape, list):
        shape = mb.concat(values=shape, axis=0)
    if shape.can_be_folded_to_const() and np.asarray(shape.val).size == 0:
        context.add(mb.const(val=np.float32(0), name=node.name))
        return
    context.add(mb.fill(shape=mb.cast(x=shape, dtype="int32"), value=0.0, name=node.name))


# --- conversion --------------------------------------------------------------------------------

def artifact_dtype(dtype: str) -> str:
    return "int32" if dtype in ("bool", "int64", "int32") else "float32"


def artifact_io(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> dict:
    """How the package's tensors differ from the declaration: {"inputs"|"outputs": {name: {dtype,
    shape}}} for the changed ones, and "dims": {name: [min, typical, max]} of every dynamic dim."""
    changed = {"inputs": {}, "outputs": {}}
    for kind, specs in (("inputs", inputs), ("outputs", outputs)):
        for s in specs:
            shape = list(s.shape) if s.shape or kind == "outputs" else [1]
            if artifact_dtype(s.dtype) != s.dtype or shape != list(s.shape):
                changed[kind][s.name] = {"dtype": artifact_dtype(s.dtype), "shape": shape}
    names = dict.fromkeys(n for s in inputs for n in s.dims())
    changed["dims"] = {n: [max(1, DIMS[n].min), DIMS[n].typical, DIMS[n].max] for n in names}
    return changed


class _CoreMLInterface(nn.Module):
    """The graph with Core ML's tensor types at its boundary (see the module docstring)."""

    def __init__(self, graph: nn.Module, inputs: tuple[TensorSpec, ...]):
        super().__init__()
        self.inner = graph  # not `graph`: a traced module's `graph` is its TorchScript graph
        self.specs = inputs

    def forward(self, *args: Tensor):
        restored = []
        for x, spec in zip(args, self.specs):
            if spec.dtype == "bool":
                x = x != 0
            elif spec.dtype == "int64":
                x = x.long()
            restored.append(x.reshape(()) if not spec.shape else x)
        outputs = self.inner(*restored)
        return tuple(y.int() if y.dtype in (torch.bool, torch.int64) else y for y in outputs)


def _input_types(inputs: tuple[TensorSpec, ...], dims: dict[str, list[int]]) -> list:
    ranges: dict[str, object] = {}  # one RangeDim per dimension expression, shared by the inputs
    types = []
    for spec in inputs:
        shape = []
        for entry in spec.shape:
            if isinstance(entry, int):
                shape.append(entry)
                continue
            if entry not in ranges:
                name, scale, offset = linear_form(entry)
                low, typical, high = (scale * v + offset for v in dims[name])
                ranges[entry] = ct.RangeDim(lower_bound=low, upper_bound=high, default=typical)
            shape.append(ranges[entry])
        types.append(ct.TensorType(name=spec.name, shape=ct.Shape(shape or [1]),
                                   dtype=_CT_DTYPES[artifact_dtype(spec.dtype)]))
    return types


@dataclass
class CoreMLInfo:
    path: str
    seconds: float
    io: dict  # artifact_io(): what differs from the declaration


def _compress(model, compression: str):
    if compression == "none":
        return model
    from coremltools.optimize import coreml as opt
    if compression == "linear8":
        config = opt.OptimizationConfig(global_config=opt.OpLinearQuantizerConfig(mode="linear_symmetric"))
        return opt.linear_quantize_weights(model, config)
    import importlib.util
    if importlib.util.find_spec("sklearn") is None:  # coremltools' k-means palettizer imports it
        raise ToolkitError(f"Core ML weight compression {compression} needs scikit-learn: pip install scikit-learn")
    nbits = int(compression.removeprefix("palettize"))
    config = opt.OptimizationConfig(global_config=opt.OpPalettizerConfig(mode="kmeans", nbits=nbits))
    return opt.palettize_weights(model, config)


_TARGETS = {"iOS16": "iOS16", "iOS17": "iOS17", "iOS18": "iOS18", "macOS13": "macOS13", "macOS14": "macOS14",
            "macOS15": "macOS15"}


def convert_coreml(graph: nn.Module, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                   example: dict[str, np.ndarray], path: str | Path, precision: str = "fp16",
                   deployment_target: str = "iOS17", compute_units: str = "ALL",
                   compression: str = "none") -> CoreMLInfo:
    """Trace `graph` on `example` (declared dtypes) and save an mlprogram package at `path`."""
    if deployment_target not in _TARGETS:
        raise ValueError(f"unknown Core ML deployment target {deployment_target!r}; known: {', '.join(_TARGETS)}")
    start = time.perf_counter()
    io = artifact_io(inputs, outputs)
    wrapped = _CoreMLInterface(graph.eval(), inputs).eval()
    args = []
    for spec in inputs:
        x = np.asarray(example[spec.name]).astype(artifact_dtype(spec.dtype))
        args.append(torch.from_numpy(x.reshape(x.shape or (1,))))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript deprecation, untested-torch-version notices
        traced = torch.jit.trace(wrapped, tuple(args), check_trace=False)
        model = ct.convert(
            traced, inputs=_input_types(inputs, io["dims"]),
            outputs=[ct.TensorType(name=s.name, dtype=_CT_DTYPES[artifact_dtype(s.dtype)]) for s in outputs],
            convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, _TARGETS[deployment_target]),
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            compute_units=getattr(ct.ComputeUnit, compute_units), skip_model_load=True)
        model = _compress(model, compression)
    model.short_description = "EfficientSAM3 component (esam3-toolkit)"
    model.save(str(path))
    return CoreMLInfo(str(path), time.perf_counter() - start, io)


# --- what can be checked without macOS ---------------------------------------------------------

def _load_spec(path: str | Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def _features(features) -> list[dict]:
    out = []
    for f in features:
        array = f.type.multiArrayType
        ranges = [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges]
        out.append({"name": f.name, "dtype": _SPEC_DTYPES.get(array.dataType, str(array.dataType)),
                    "shape": list(array.shape), "ranges": ranges or [[d, d] for d in array.shape]})
    return out


def inspect_package(path: str | Path) -> dict:
    """The saved package as Core ML reads it: spec version, I/O (names, types, shape ranges),
    op counts of the main function, and size on disk."""
    spec = _load_spec(path)
    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    ops = collections.Counter(op.type for op in block.operations)
    size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    return {"specification_version": spec.specificationVersion, "opset": main.opset,
            "inputs": _features(spec.description.input), "outputs": _features(spec.description.output),
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])), "op_count": sum(ops.values()),
            "size_bytes": size}


def check_package(info: dict, inputs: list[dict], outputs: list[dict], dims: dict[str, list[int]]) -> list[str]:
    """Differences between an inspected package and the manifest's I/O entries (artifact dtypes and
    shapes, with each dynamic dimension's range)."""
    problems = []
    for kind, expected, got in (("input", inputs, info["inputs"]), ("output", outputs, info["outputs"])):
        if [e["name"] for e in expected] != [g["name"] for g in got]:
            problems.append(f"{kind} names {[g['name'] for g in got]}, declared {[e['name'] for e in expected]}")
            continue
        for e, g in zip(expected, got):
            if e["artifact_dtype"] != g["dtype"]:
                problems.append(f"{kind} {e['name']}: type {g['dtype']}, expected {e['artifact_dtype']}")
            if kind == "output":  # output shapes are inferred at run time; only the rank is recorded
                continue
            want = [[v, v] if isinstance(v, int) else [_bound(v, dims, 0), _bound(v, dims, 2)]
                    for v in e["artifact_shape"]]
            if g["ranges"] != want:
                problems.append(f"{kind} {e['name']}: shape ranges {g['ranges']}, expected {want}")
    return problems


def _bound(expr: str, dims: dict[str, list[int]], which: int) -> int:
    name, scale, offset = linear_form(expr)
    return scale * dims[name][which] + offset


class CoreMLRunner(Runner):
    """Runs an .mlpackage with Core ML: macOS only (coremltools has no predictor elsewhere)."""

    name = "coreml"

    def __init__(self, path: str | Path, compute_units: str = "ALL"):
        if platform.system() != "Darwin":
            raise RuntimeError("Core ML prediction needs macOS (coremltools has no predictor on "
                               f"{platform.system()})")
        spec = _load_spec(path)
        super().__init__([f.name for f in spec.description.input], [f.name for f in spec.description.output])
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))

    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.model.predict(feeds)
        return [np.asarray(out[n]) for n in self.output_names]
