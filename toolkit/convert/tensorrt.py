"""ONNX -> TensorRT-ready ONNX stage, the operator check, and the engine build step.

TensorRT engines are built where they run: an engine is tied to its GPU and TensorRT version,
so a Jetson bundle carries ONNX that TensorRT can take, plus the step that builds the engines on
the device. This module makes and checks that ONNX:

- int64 graph inputs and outputs become int32 (a Cast inside the graph restores int64 where the
  graph computes with it), so an app binds int32 buffers only;
- every node is checked against the ONNX operator list of the target's TensorRT version
  (`toolkit/data/tensorrt_operators.json`, made from onnx-tensorrt's `docs/operators.md` by
  `scripts/tensorrt_operators.py`; the source of each list is recorded there): the operator is
  supported, its tensor type is one the list gives, the default ONNX domain only, the model's
  opset inside the parser's range, and the machine-checkable restrictions (Resize without
  antialiasing). A version without a list of its own is checked against the newest list that
  is not newer, and the report says which list was used; a version older than every shipped
  list (TensorRT 8.5 for Jetson Xavier) is checked against the oldest list, and the build and
  the manifest say that this is not a check of that version;
- every dynamic input gets a min / opt / max profile from the component's dimensions;
- `engine_script` writes the trtexec commands that build the engines on the device, and
  `build_engine` builds one with the TensorRT Python API wherever `import tensorrt` works.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from ..components.spec import linear_form

_TYPE_NAMES = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
               TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL",
               TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8", TensorProto.DOUBLE: "DOUBLE"}


_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


@dataclass(frozen=True)
class OperatorList:
    version: str  # the list's TensorRT version
    requested: str  # the target's TensorRT version
    source: str
    opsets: tuple[int, int]
    operators: dict

    @property
    def newer(self) -> bool:
        """True when the list is of a newer TensorRT than the target's (none old enough is shipped):
        the check then cannot catch what the older version lacks."""
        return _version_key(self.version) > _version_key(self.requested)

    @property
    def label(self) -> str:
        if self.version == self.requested:
            return f"TensorRT {self.version} operator list"
        if self.newer:
            return (f"TensorRT {self.version} operator list, NEWER than the target's TensorRT {self.requested} "
                    f"(no list for {self.requested} or older is shipped): NOT a check of TensorRT "
                    f"{self.requested}; operators, types or opsets it lacks are not caught, the engine build on the "
                    "device is the check")
        return (f"TensorRT {self.version} operator list (no list for {self.requested} is shipped; "
                f"{self.version} is the newest one not newer than it)")


@cache
def _lists() -> dict:
    return json.loads(files("toolkit").joinpath("data", "tensorrt_operators.json").read_text())["versions"]


def operator_list(version: str) -> OperatorList:
    """The list for `version`, or the newest older one; when every shipped list is newer, the
    oldest, marked `newer` (its label says the check is not one of `version`)."""
    known = sorted(_lists(), key=_version_key)
    usable = [v for v in known if _version_key(v) <= _version_key(version)] or known[:1]
    data = _lists()[usable[-1]]
    return OperatorList(usable[-1], version, data["source"], tuple(data["opsets"]), data["operators"])


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _graphs(sub)


def check_operators(model: onnx.ModelProto, ops: OperatorList) -> list[str]:
    """Problems that stop TensorRT from taking `model`, one line each (empty: it passes)."""
    problems = []
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not ops.opsets[0] <= entry.version <= ops.opsets[1]:
            problems.append(f"opset {entry.version} is outside the parser's range {ops.opsets[0]}..{ops.opsets[1]}")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for graph in _graphs(inferred.graph):
        for v in (*graph.input, *graph.output, *graph.value_info):
            types[v.name] = v.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
    zero_points = {init.name: init for graph in _graphs(inferred.graph) for init in graph.initializer}
    seen = set()
    for graph in _graphs(inferred.graph):
        for node in graph.node:
            problem = _node_problem(node, types, ops) or _zero_point_problem(node, zero_points)
            if problem and problem not in seen:
                seen.add(problem)
                problems.append(problem)
    return problems


def _node_problem(node: onnx.NodeProto, types: dict, ops: OperatorList) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return f"{node.op_type} (domain {node.domain}) is not a standard ONNX operator"
    entry = ops.operators.get(node.op_type)
    if entry is None or not entry["supported"]:
        return f"{node.op_type} is not supported"
    if node.op_type == "Resize" and any(a.name == "antialias" and a.i for a in node.attribute):
        return "Resize with antialias=1 is not supported"
    allowed = set(entry["types"])
    if not allowed:
        return None
    # The type column names the operator's data type: the output's, or for comparisons and other
    # ops that output BOOL from non-BOOL data, and for Q/DQ (what is quantized / dequantized), the
    # first input's.
    name = node.output[0] if node.output else ""
    if (types.get(name) == TensorProto.BOOL and "BOOL" not in allowed or node.op_type in _QDQ) and node.input:
        name = node.input[0]
    kind = _TYPE_NAMES.get(types.get(name, 0))
    if kind is not None and kind not in allowed:
        return f"{node.op_type} on {kind} is not supported (supported: {', '.join(entry['types'])})"
    return None


def _zero_point_problem(node: onnx.NodeProto, initializers: dict) -> str | None:
    """TensorRT takes symmetric quantization only: a Q/DQ zero point must be a constant 0."""
    if node.op_type not in _QDQ or len(node.input) < 3 or not node.input[2]:
        return None
    zero_point = initializers.get(node.input[2])
    if zero_point is None:
        return f"{node.op_type} with a zero point computed at run time is not supported (it must be a constant 0)"
    if onnx.numpy_helper.to_array(zero_point).any():
        return f"{node.op_type} with a non-zero zero point is not supported (TensorRT quantizes symmetrically)"
    return None


def make_trt_ready(src: str | Path, dst: str | Path) -> dict:
    """Copy an ONNX model with int64 inputs / outputs turned into int32; returns the changed
    tensors as {"inputs"|"outputs": {name: {"dtype": "int32"}}}."""
    model = onnx.load(str(src))
    graph = model.graph
    changed = {"inputs": {}, "outputs": {}}
    casts = []
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.INT64:
            continue
        inner = f"{value.name}__int64"
        for node in graph.node:
            node.input[:] = [inner if name == value.name else name for name in node.input]
        casts.append(helper.make_node("Cast", [value.name], [inner], to=TensorProto.INT64, name=f"{inner}_cast"))
        value.type.tensor_type.elem_type = TensorProto.INT32
        changed["inputs"][value.name] = {"dtype": "int32"}
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.INT64:
            continue
        inner = f"{value.name}__int64"
        for node in graph.node:
            node.output[:] = [inner if name == value.name else name for name in node.output]
        graph.node.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.INT32, name=f"{inner}_cast"))
        value.type.tensor_type.elem_type = TensorProto.INT32
        changed["outputs"][value.name] = {"dtype": "int32"}
    for cast in reversed(casts):
        graph.node.insert(0, cast)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return changed


def profiles(inputs: list[dict], dims: dict[str, list[int]]) -> dict[str, list[list[int]]]:
    """{input: [min_shape, opt_shape, max_shape]} for every input with a dynamic dimension
    (manifest I/O entries; dims: name -> [min, opt, max])."""
    out = {}
    for entry in inputs:
        shape = entry["artifact_shape"]
        if all(isinstance(v, int) for v in shape):
            continue
        out[entry["name"]] = [[v if isinstance(v, int) else _at(v, dims, i) for v in shape] for i in range(3)]
    return out


def _at(expr: str, dims: dict[str, list[int]], which: int) -> int:
    name, scale, offset = linear_form(expr)
    return scale * dims[name][which] + offset


def trtexec_command(onnx_rel: str, engine_rel: str, profile: dict[str, list[list[int]]], precision: str,
                    workspace_mib: int) -> list[str]:
    def shapes(i: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, p[i]))}" for name, p in profile.items())
    cmd = ["$TRTEXEC", f"--onnx={onnx_rel}", f"--saveEngine={engine_rel}",
           f"--memPoolSize=workspace:{workspace_mib}M", "--skipInference"]
    # An int8 artifact is a Q/DQ ONNX (explicit quantization): its quantized layers run in int8, the
    # layers around them in fp16 (the ladder's next rung), so both kinds of kernels are allowed.
    cmd += {"fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}.get(precision, [])
    if profile:
        cmd += [f"--minShapes={shapes(0)}", f"--optShapes={shapes(1)}", f"--maxShapes={shapes(2)}"]
    return cmd


def engine_script(jobs: list[tuple[str, str, str, dict, str]], settings: dict) -> str:
    """A POSIX shell script building every engine on the device: jobs are (component, onnx path,
    engine path, profile, precision), paths relative to the bundle root."""
    lines = [
        "#!/bin/sh",
        f"# Builds the TensorRT engines of this bundle on the device: Jetson with JetPack {settings['jetpack']}",
        f"# (TensorRT {settings['version']}). Run it on the Jetson from anywhere: ./engines/build_engines.sh",
        "# An engine is tied to its GPU and TensorRT version: build again after a JetPack upgrade.",
        "# Equivalent with Polygraphy: polygraphy convert models/X.onnx -o engines/X.plan --fp16 \\",
        "#     --trt-min-shapes ... --trt-opt-shapes ... --trt-max-shapes ...  (same shapes as below)",
        "set -eu",
        'cd "$(dirname "$0")/.."',
        "TRTEXEC=${TRTEXEC:-/usr/src/tensorrt/bin/trtexec}",
        '[ -x "$TRTEXEC" ] || { echo "trtexec not found at $TRTEXEC (set TRTEXEC=...)" >&2; exit 1; }',
    ]
    for component, onnx_rel, engine_rel, profile, precision in jobs:
        cmd = trtexec_command(onnx_rel, engine_rel, profile, precision, settings["workspace_mib"])
        log = engine_rel.rsplit(".", 1)[0] + ".log"
        lines += [f'echo "building {engine_rel}"',
                  " ".join(c if c.startswith("$") else shlex.quote(c) for c in cmd) + f" > {shlex.quote(log)} 2>&1"]
    lines.append('echo "all engines built under engines/"')
    return "\n".join(lines) + "\n"


def tensorrt_status() -> tuple[str | None, str]:
    """(TensorRT version, '') where `import tensorrt` works here, else (None, why not)."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install failing to load its libraries
        return None, f"TensorRT is not available here ({type(e).__name__}: {str(e).strip()[:200] or 'no module'})"
    return trt.__version__, ""


def build_engine(onnx_path: str | Path, engine_path: str | Path, profile: dict[str, list[list[int]]],
                 precision: str, workspace_mib: int) -> None:
    """Build and serialise one engine with the TensorRT Python API (TensorRT 10)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for flag in {"fp16": ("FP16",), "int8": ("INT8", "FP16")}.get(precision, ()):  # as trtexec_command
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if profile:
        opt = builder.create_optimization_profile()
        for name, (low, typical, high) in profile.items():
            opt.set_shape(name, low, typical, high)
        config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    Path(engine_path).write_bytes(bytes(serialized))
