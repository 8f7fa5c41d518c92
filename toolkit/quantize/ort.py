"""ONNX quantization stages, with onnxruntime's own tools (onnxruntime.quantization, and its
float16 converter in onnxruntime.transformers).

`quantize_onnx(src, dst, precision, settings, feeds, flavour)`:

- **int8**, flavour "ort" (cpu, android): `quant_pre_process` (symbolic shape inference +
  optimisation; without the symbolic pass where it cannot take the graph), then `quantize_static`
  in QDQ format: int8 weights (per-channel where settings say so), activations uint8 or int8 as
  `activation_type` / `activation_symmetric` say, calibrated with MinMax, Entropy or Percentile over
  the recorded feeds (streamed one sample at a time from a `FeedStore`). Only the weighted layers
  are quantized unless `operators = "all"` (see `gate.OPERATOR_SETS`): Conv / ConvTranspose / MatMul /
  Gemm nodes, less the MatMuls of two activations (`_activation_products`); types in `keep_float`
  stay in float (their nodes are excluded).
- **int8**, flavour "tensorrt" (jetson): explicit quantization as TensorRT takes it: symmetric
  int8 activations (zero point 0), symmetric per-channel int8 weights, float biases, Q/DQ only on
  the inputs of Conv / ConvTranspose / MatMul / Gemm (TensorRT fuses those; other layers run in the
  engine's float precision; a tensor a weighted layer shares with, say, a residual Add reaches both
  through the same DQ, as in TensorRT's own QAT graphs). The result is checked (`qdq_summary`): every QuantizeLinear /
  DequantizeLinear is int8 with zero point 0. TensorRT builds the engine with --int8 --fp16 from it.
- **int8-weights**: `quantize_dynamic`: int8 weights of MatMul / Gemm, activations quantized at run
  time (what wins for the 63M-parameter text encoder), and int8 embedding tables (a Gather of a
  constant table dequantizes the rows it picks: the text encoder's 49408 x 512 token table is
  96.5 of its 241 MiB); Conv / ConvTranspose weights, which it would turn into ConvInteger
  (activations quantized too), become int8 behind a DequantizeLinear, computed in float
  (`_dequantize_weights`: a quarter of the file; ONNX Runtime keeps the DequantizeLinear
  rather than folding it back to float). A graph without such weights is refused (nothing would be
  quantized).
- **int16-weights**: every Conv / ConvTranspose / MatMul / Gemm constant weight stored as symmetric
  int16 (per output channel) behind a DequantizeLinear, computed in float (`_dequantize_weights`
  again; com.microsoft DequantizeLinear below opset 21, which has no int16 in the ONNX domain): half
  the file at about 90 dB per weight, the rung between int8 weights and fp32 for a component whose
  untrained stack amplifies int8 weight rounding (the vision encoder: 40.8 dB per tensor, 9.5 dB out).
- **mixed-weights**: the same DequantizeLinear form with int8 on the largest weights the outputs
  tolerate and int16 on the rest, chosen on the calibration feeds by bisection over the weights
  ranked by size (`_mixed_weights`): most of int8-weights' saving for a component whose int8 rounding
  is amplified by a few small early layers (the untrained vision encoder).
- **int4-weights**: `MatMulNBitsQuantizer` (4-bit blocks, symmetric, `block_size`): MatMul with a
  constant 2-D weight becomes com.microsoft MatMulNBits.
- In every quantized `ort`-flavour graph, float constants of 1 MiB or more that no weighted layer or
  table lookup takes (position encodings, RoPE tables, folded from the export first: `_folded`) are
  stored at the rung's weight width (int8; int16 for int16-weights) behind a DequantizeLinear too
  (`_narrow_constants`).
- **fp16**: `onnxruntime.transformers.float16.convert_float_to_float16` with float32 inputs and
  outputs kept (for GPU / NPU runtimes; ONNX Runtime's CPU provider computes most ops in fp32 and
  is slower on fp16 graphs: measured, see shared/docs/environment.md).

The .ort conversion (`toolkit.convert.ort_mobile.convert_to_ort`) runs on the quantized .onnx as on
any other. Its 'Fixed' optimisation fuses the Q/DQ patterns into ONNX Runtime's int8 kernels, so
required_operators.config lists what the graph really runs: QuantizeLinear / DequantizeLinear and
com.microsoft QLinearConv, QGemm, QLinearAdd, QLinearMul, QLinearSoftmax, DynamicQuantizeMatMul,
MatMulNBits, as used (checked in tests/test_quantize.py).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from .gate import OPERATOR_SETS, QuantSettings
from .stage import QuantizeError, StageResult, isolated, size_of

FeedSource = Callable[[], Iterator[Mapping[str, np.ndarray]]] | Iterable[Mapping[str, np.ndarray]]
TENSORRT_OP_TYPES = OPERATOR_SETS["weighted"]
WEIGHT_OP_TYPES = ("MatMul", "Gemm")  # quantize_dynamic (it rewrites a Gemm as MatMul + Add, then MatMulInteger)
DEQUANTIZED_OP_TYPES = ("Conv", "ConvTranspose")  # int8-weights stores their weights int8, float compute
WIDE_WEIGHT_OP_TYPES = DEQUANTIZED_OP_TYPES + WEIGHT_OP_TYPES  # int16-weights: every weighted layer
TABLE_OP_TYPES = ("Gather",)  # quantize_dynamic stores a constant table int8 and dequantizes the gathered rows
NARROW_CONSTANT_BYTES = 1 << 20  # float constants this large are stored narrow in quantized graphs (_narrow_constants)
CONSTANT_BITS = {"int8": 8, "int8-weights": 8, "int16-weights": 16, "int4-weights": 8}  # at the rung's weight width


class _NoRankOneAxis(logging.Filter):
    """onnxruntime's per-channel quantizer warns once per 1-D weight (LayerNorm scales: one axis, so
    it quantizes them per tensor, as it should) through the root logger: dozens of lines per graph."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is out-of-range for weight" not in record.getMessage()


def _quiet_per_channel_warnings() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, _NoRankOneAxis) for f in root.filters):
        root.addFilter(_NoRankOneAxis())
    for handler in root.handlers:  # a filter on the logger does not see records of child loggers
        if not any(isinstance(f, _NoRankOneAxis) for f in handler.filters):
            handler.addFilter(_NoRankOneAxis())


def op_counts(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    counts = Counter(f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                     for n in model.graph.node)
    return dict(sorted(counts.items()))


def qdq_summary(model: onnx.ModelProto | str | Path) -> dict:
    """Q/DQ nodes of a graph: counts, element types, zero points (all zero?), per-channel DQs."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    inits = {i.name: i for i in model.graph.initializer}
    types, nonzero, per_channel = Counter(), 0, 0
    q = dq = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        q += node.op_type == "QuantizeLinear"
        dq += node.op_type == "DequantizeLinear"
        if len(node.input) > 2 and node.input[2] in inits:
            zp = inits[node.input[2]]
            types[onnx.TensorProto.DataType.Name(zp.data_type)] += 1
            nonzero += int(np.any(onnx.numpy_helper.to_array(zp) != 0))
        scale = inits.get(node.input[1])
        if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            per_channel += 1
    return {"QuantizeLinear": q, "DequantizeLinear": dq, "zero_point_types": dict(types),
            "nonzero_zero_points": nonzero, "per_channel": per_channel}


class _StreamReader:
    """onnxruntime CalibrationDataReader over a feed source: one sample in memory at a time.

    quantize_static gathers every calibration sample's intermediate tensors before reducing them
    (4-5 GB for 16 photos of the vision encoder), unless `CalibStridedMinMax` makes it call the
    calibrator once per range of samples (`set_range`); with a stride of 1 the calibrator reduces
    (min-max merge, or histogram update for entropy / percentile) after every sample. That option
    works for every calibration method despite its name. `CalibMaxIntermediateOutputs` is not used:
    with MinMax it drops the collected outputs unreduced (ORT 1.32: 'No data is collected')."""

    def __init__(self, source: FeedSource, input_names: list[str], dtypes: dict[str, np.dtype]):
        self.source, self.input_names, self.dtypes = source, input_names, dtypes
        self.iterator: Iterator | None = None
        self.remaining: int | None = None  # samples left in the current range
        self.total: int | None = None
        self.count = 0

    def _fresh(self) -> Iterator:
        return iter(self.source() if callable(self.source) else self.source)

    def __len__(self) -> int:
        if self.total is None:  # one pass over the source (streamed) to count
            self.total = sum(1 for _ in self._fresh())
        return self.total

    def set_range(self, start_index: int, end_index: int) -> None:
        if self.iterator is None or start_index == 0:
            self.iterator = self._fresh()
        self.remaining = end_index - start_index

    def get_next(self) -> dict | None:
        if self.iterator is None:
            self.iterator = self._fresh()
        if self.remaining is not None:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
        feeds = next(self.iterator, None)
        if feeds is None:
            return None
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise QuantizeError(f"calibration feeds lack the graph inputs {missing}")
        self.count += 1
        return {n: np.asarray(feeds[n]).astype(self.dtypes.get(n, np.asarray(feeds[n]).dtype), copy=False)
                for n in self.input_names}

    def rewind(self) -> None:
        self.iterator, self.remaining = None, None


STREAMING = {"CalibStridedMinMax": 1}  # calibrate one sample at a time (see _StreamReader)


def _reader(source: FeedSource, model_path: Path) -> _StreamReader:
    from onnxruntime.quantization import CalibrationDataReader
    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    dtypes = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) for v in inputs}

    class Reader(_StreamReader, CalibrationDataReader):
        pass
    return Reader(source, [v.name for v in inputs], dtypes)


@contextlib.contextmanager
def _cwd(path: Path):
    """onnxruntime's symbolic shape inference, when it cannot infer every shape (the text encoder),
    saves the model with its weights as external data into the *current directory*
    (sym_shape_infer_temp.onnx + a 250 MB data file) before giving up: run it inside a temporary one."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _preprocess(src: Path, dst: Path, notes: list[str]) -> Path:
    src, dst = src.resolve(), dst.resolve()
    with _cwd(dst.parent):
        return _preprocess_here(src, dst, notes)


def _preprocess_here(src: Path, dst: Path, notes: list[str]) -> Path:
    from onnxruntime.quantization import quant_pre_process
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            quant_pre_process(str(src), str(dst))
        notes.append("quant_pre_process: symbolic shape inference + optimisation")
    except Exception as first:  # noqa: BLE001 - the symbolic pass does not take every graph
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
            notes.append(f"quant_pre_process without symbolic shape inference ({type(first).__name__})")
        except Exception as second:  # noqa: BLE001
            notes.append(f"quant_pre_process failed ({type(second).__name__}); quantized the graph as exported")
            return src
    return dst


def _excluded(model_path: Path, keep_float: Iterable[str]) -> list[str]:
    keep = set(keep_float)
    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in keep and n.name]


def quantize_onnx(src: str | Path, dst: str | Path, precision: str, settings: QuantSettings | None = None,
                  feeds: FeedSource | None = None, flavour: str = "ort", runs_on: FeedSource | None = None) -> StageResult:
    """Quantize the ONNX file `src` to `dst` at `precision` (int8 | int8-weights | mixed-weights |
    int16-weights | int4-weights | fp16 | fp32); `feeds` (an iterable of feed dicts, or a callable
    returning a fresh iterator: a `FeedStore.iter` bound to the component) is needed for int8 and
    mixed-weights. `flavour` "tensorrt" makes the
    int8 graph TensorRT's explicit-quantization form. Runs in a child process (`stage.isolated`):
    a native crash of the quantizer is a QuantizeError, not the end of the build. `runs_on`: feeds the
    result is run on there too, so that a graph that crashes ONNX Runtime (seen: the int8 geometry
    encoder on a prompt with zero boxes, onnxruntime 1.32) is refused before anything in the build's
    own process runs it."""
    return isolated(_quantize_onnx, src, dst, precision, settings, feeds, flavour, runs_on)


def _quantize_onnx(src, dst, precision: str, settings: QuantSettings | None, feeds: FeedSource | None,
                   flavour: str, runs_on: FeedSource | None = None) -> StageResult:
    _quiet_per_channel_warnings()
    settings = settings or QuantSettings()
    src, dst = Path(src), Path(dst)
    if flavour not in ("ort", "tensorrt"):
        raise ValueError(f"flavour {flavour!r}: expected 'ort' or 'tensorrt'")
    dst.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    notes: list[str] = []
    fmt = "tensorrt" if flavour == "tensorrt" else "onnx"
    kept = list(settings.keep_float)
    if precision == "fp32":
        model = onnx.load(str(src))
        onnx.save(model, str(dst))
        method, used = "fp32: the exported graph unchanged", {}
    elif precision == "int8":
        if feeds is None:
            raise QuantizeError("int8 needs calibration feeds")
        method, used = _static(src, dst, settings, feeds, flavour, notes)
    elif precision == "int8-weights":
        if flavour == "tensorrt":
            raise QuantizeError("TensorRT has no weight-only int8 path for these graphs; use fp16")
        method, used = _dynamic(src, dst, settings, notes)
    elif precision == "int16-weights":
        if flavour == "tensorrt":
            raise QuantizeError("16-bit weights are not a TensorRT path here; use fp16")
        method, used = _wide_weights(src, dst, settings)
    elif precision == "mixed-weights":
        if flavour == "tensorrt":
            raise QuantizeError("mixed int8 / int16 weights are not a TensorRT path here; use fp16")
        if feeds is None:
            raise QuantizeError("mixed-weights needs calibration feeds (it chooses its int8 weights on them)")
        method, used = _mixed_weights(src, dst, settings, feeds, notes)
    elif precision == "int4-weights":
        if flavour == "tensorrt":
            raise QuantizeError("4-bit weights are not a TensorRT path here; use fp16")
        method, used = _nbits(src, dst, settings, notes)
    elif precision == "fp16":
        method, used = _fp16(src, dst, settings, notes)
    else:
        raise QuantizeError(f"precision {precision!r} is not an ONNX precision")
    bits = CONSTANT_BITS.get(precision) if flavour == "ort" else None
    if bits:  # mixed-weights narrowed its constants before choosing its weights (they are part of its error)
        model = onnx.load(str(dst))
        count, saved = _narrow_constants(model, bits)
        if count:
            onnx.save(model, str(dst))
            used["narrowed_constants"] = {"count": count, "bits": bits, "bytes_saved": saved}
            notes.append(f"{count} large float constants stored int{bits} behind DequantizeLinear "
                         f"({saved / 2**20:.1f} MiB saved)")
    operators = op_counts(dst)
    if flavour == "tensorrt" and precision == "int8":
        summary = qdq_summary(dst)
        bad = {t: c for t, c in summary["zero_point_types"].items() if t != "INT8"}
        if summary["nonzero_zero_points"] or bad or not summary["QuantizeLinear"]:
            raise QuantizeError(f"the QDQ graph is not TensorRT's explicit form: {summary}")
        used["qdq"] = summary
    if runs_on is not None:
        notes.append(f"ran on {_run_every(dst, runs_on)} evaluation samples in the quantizer's process first")
    return StageResult(dst, fmt, precision, method, used, kept, operators, time.perf_counter() - start,
                       size_of(dst), size_of(src), notes)


def _run_every(path: Path, feeds: FeedSource) -> int:
    """Run the graph at `path` on every feed (a crash here kills only the isolated child); returns how many."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    count = 0
    for sample in (feeds() if callable(feeds) else feeds):
        session.run(None, {n: sample[n] for n in names})
        count += 1
    return count


def _static(src: Path, dst: Path, settings: QuantSettings, feeds: FeedSource, flavour: str,
            notes: list[str]) -> tuple[str, dict]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    tensorrt = flavour == "tensorrt"
    activation = QuantType.QInt8 if tensorrt or settings.activation_type == "int8" else QuantType.QUInt8
    symmetric = True if tensorrt else settings.activation_symmetric
    per_channel = True if tensorrt else settings.per_channel
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, **STREAMING}
    if tensorrt:
        extra["QuantizeBias"] = False  # TensorRT takes float biases; int32 bias Q/DQ is ONNX Runtime's form
        # Q/DQ on the inputs of the weighted layers only (TensorRT's placement guidance): the layer's
        # output stays float, so the next layer's input Q/DQ is the one TensorRT fuses.
        extra["OpTypesToExcludeOutputQuantization"] = list(TENSORRT_OP_TYPES)
    if settings.method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    chosen = OPERATOR_SETS["weighted" if tensorrt else settings.operators]
    op_types = [t for t in chosen if t not in settings.keep_float] if chosen else None
    with tempfile.TemporaryDirectory(prefix="esam3-q-") as tmp:
        pre = _preprocess(src, Path(tmp) / "pre.onnx", notes)
        reader = _reader(feeds, pre)
        if not len(reader):
            raise QuantizeError("the calibration feeds are empty")
        exclude = _excluded(pre, settings.keep_float)
        products = [] if tensorrt or settings.operators != "weighted" else _activation_products(pre, exclude)
        exclude += products
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                            per_channel=per_channel, activation_type=activation, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude or None, calibrate_method=methods[settings.method],
                            extra_options=extra)
    used = {"quant_format": "QDQ", "activation_type": "int8" if activation == QuantType.QInt8 else "uint8",
            "activation_symmetric": symmetric, "weight_type": "int8", "weight_symmetric": True,
            "per_channel": per_channel, "calibration": settings.method, "samples": reader.count,
            "op_types_to_quantize": op_types or "all", "nodes_kept_float": len(exclude),
            "activation_products_kept_float": len(products)}
    if settings.method == "percentile":
        used["percentile"] = settings.percentile
    what = "TensorRT explicit quantization (symmetric int8 Q/DQ)" if tensorrt else "static QDQ int8"
    return (f"{what}, {'per-channel' if per_channel else 'per-tensor'} weights, {settings.method} calibration "
            f"on {reader.count} samples"), used


def _activation_products(model_path: Path, already: Iterable[str]) -> list[str]:
    """MatMul nodes without a constant input: products of two activations (attention scores, attention
    times values). "weighted" leaves them in float for ONNX Runtime: as QLinearMatMul on two tensors
    quantized at run time they made the full-size fusion encoder 2.4x slower than fp32 (2280 vs
    909 ms, AMD EPYC 2 cores), and 1 dB less accurate, where quantizing only its weighted layers ran it
    in 848 ms at 29.0 dB (untrained weights). TensorRT keeps them: it fuses their Q/DQ into its
    attention kernels."""
    model = onnx.load(str(model_path), load_external_data=False)
    constants = {i.name for i in model.graph.initializer} | \
        {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    skip = set(already)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name and n.name not in skip
            and not any(i in constants for i in n.input)]


def _weight_nodes(path: Path, op_types: Iterable[str]) -> Counter:
    """Per operator type of `op_types`, how many nodes have a constant weight (second input)."""
    model = onnx.load(str(path), load_external_data=False)
    inits, kinds = {i.name for i in model.graph.initializer}, set(op_types)
    return Counter(n.op_type for n in model.graph.node
                   if n.op_type in kinds and len(n.input) > 1 and n.input[1] in inits)


def _dynamic(src: Path, dst: Path, settings: QuantSettings, notes: list[str]) -> tuple[str, dict]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    op_types = [t for t in WEIGHT_OP_TYPES if t not in settings.keep_float]
    conv_types = [t for t in DEQUANTIZED_OP_TYPES if t not in settings.keep_float]
    granularity = "per channel" if settings.per_channel else "per tensor"
    with tempfile.TemporaryDirectory(prefix="esam3-q-") as tmp:
        pre = _preprocess(src, Path(tmp) / "pre.onnx", notes)
        weighted = _weight_nodes(pre, op_types + conv_types)  # one read of the graph for both kinds
        matmuls, convs = (sum(weighted[t] for t in kinds) for kinds in (op_types, conv_types))
        if not matmuls and not convs:
            raise QuantizeError(f"no {'/'.join(op_types + conv_types)} with constant weights: weight-only int8 "
                                "would change nothing")
        parts, used = [], {"weight_type": "int8", "per_channel": settings.per_channel}
        if matmuls:
            op_types += [t for t in TABLE_OP_TYPES if t not in settings.keep_float]
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=settings.per_channel,
                             op_types_to_quantize=op_types,
                             nodes_to_exclude=_excluded(pre, settings.keep_float) or None)
            parts.append(f"dynamic int8 on {'/'.join(op_types)} (activations quantized at run time)")
            used["op_types_to_quantize"] = op_types
        if convs:
            model = onnx.load(str(dst if matmuls else pre))
            count = _dequantize_weights(model, conv_types, settings.per_channel, 8)
            onnx.save(model, str(dst))
            parts.append(f"{count} {'/'.join(conv_types)} weights int8 behind DequantizeLinear (float compute)")
            used["dequantized_weights"] = count
    return f"int8 weights {granularity}: " + "; ".join(parts), used


def _folded(src: Path) -> onnx.ModelProto:
    """`src` with ONNX Runtime's basic (platform-independent) optimisations applied, constant folding
    above all: what the .ort conversion and any ONNX Runtime session would compute at load anyway, done
    here so that the folded constants (position encodings, RoPE tables) exist as initializers that
    `_narrow_constants` can store narrower. Kept float they would reappear, full size, in the .ort."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory(prefix="esam3-q-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def _wide_weights(src: Path, dst: Path, settings: QuantSettings) -> tuple[str, dict]:
    op_types = [t for t in WIDE_WEIGHT_OP_TYPES if t not in settings.keep_float]
    model = _folded(src)
    count = _dequantize_weights(model, op_types, settings.per_channel, 16)
    onnx.save(model, str(dst))
    if not count:
        raise QuantizeError(f"no {'/'.join(op_types)} with constant weights: 16-bit weights would change nothing")
    granularity = "per channel" if settings.per_channel else "per tensor"
    return (f"int16 weights {granularity}: {count} {'/'.join(op_types)} weights behind DequantizeLinear "
            "(float compute)"), {"weight_type": "int16", "per_channel": settings.per_channel,
                                 "op_types_to_quantize": op_types, "dequantized_weights": count}


def _weight_axis(node: onnx.NodeProto, ndim: int) -> int | None:
    """The output-channel axis of `node`'s weight (its second input), or None where it has none
    (a grouped ConvTranspose, whose axis 1 is channels per group; a MatMul weight that is not 2-D)."""
    attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if attrs.get("group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    return 1 if ndim == 2 else None  # MatMul: (in, out)


def _dequantizable(model: onnx.ModelProto, op_types: Iterable[str]) -> list[tuple[str, onnx.NodeProto]]:
    """(weight, node) for every constant weight (second input) of an `op_types` node that only such nodes
    use, once each, in graph order: what weight-only quantization can store narrower."""
    inits = {i.name for i in model.graph.initializer}
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    kinds, seen, out = set(op_types), set(), []
    for node in model.graph.node:
        weight = node.input[1] if node.op_type in kinds and len(node.input) > 1 else None
        if weight in inits and users[weight] <= kinds and weight not in seen:
            seen.add(weight)
            out.append((weight, node))
    return out


def _onnx_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _behind_dequantize(model: onnx.ModelProto, init: onnx.TensorProto, width: int, axis: int | None) -> tuple:
    """Replace the float initializer `init` by its symmetric int8 / int16 (`width`) form, scaled per
    `axis` (None: per tensor), and return (the DequantizeLinear that makes it again under its name,
    bytes saved). int16 takes com.microsoft's DequantizeLinear below opset 21 (ONNX's has int16 from 21)."""
    dtype = {8: np.int8, 16: np.int16}[width]
    limit = np.iinfo(dtype).max  # symmetric: -limit..limit
    domain = "com.microsoft" if width == 16 and _onnx_opset(model) < 21 else ""
    if domain and not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    array = onnx.numpy_helper.to_array(init).astype(np.float32)
    if axis is None:
        scale = np.array(np.abs(array).max() / limit, dtype=np.float32)
        shaped = scale
    else:
        peaks = np.abs(np.moveaxis(array, axis, 0)).reshape(array.shape[axis], -1).max(1)
        scale = (peaks / limit).astype(np.float32)
        shaped = scale.reshape([-1 if d == axis else 1 for d in range(array.ndim)])
    scale[scale == 0] = 1.0  # an all-zero tensor or channel: any scale represents it exactly
    quantized = np.clip(np.rint(array / shaped), -limit, limit).astype(dtype)
    name, stored = init.name, f"{init.name}_int{width}"
    model.graph.initializer.remove(init)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(quantized, stored),
                                    onnx.numpy_helper.from_array(scale, f"{name}_scale"),
                                    onnx.numpy_helper.from_array(np.zeros_like(scale, dtype=dtype), f"{name}_zero")])
    per_axis = {} if axis is None else {"axis": axis}
    node = onnx.helper.make_node("DequantizeLinear", [stored, f"{name}_scale", f"{name}_zero"], [name],
                                 name=f"{name}_dequantize", domain=domain, **per_axis)
    return node, array.nbytes - quantized.nbytes


def _prepend(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Constants' DequantizeLinear nodes first: the graph stays topologically sorted."""
    ordered = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(ordered)


def _dequantize_weights(model: onnx.ModelProto, op_types: Iterable[str], per_channel: bool,
                        bits: int | Mapping[str, int]) -> int:
    """Constant weights of `op_types` nodes stored as symmetric int8 / int16 with a DequantizeLinear in
    front: weight-only quantization with float compute. `bits`: one width for every weight, or a width
    per weight name (weights it does not name stay float). Written here because onnxruntime's
    quantizers have no weight-only path for convolutions (quantize_dynamic turns a Conv into
    ConvInteger, which quantizes the activations too; MatMulNBits is MatMul only) nor a 16-bit or
    mixed-width one. Scales per output channel (`_weight_axis`). Edits `model`; returns how many
    weights were quantized."""
    if _onnx_opset(model) < 13:
        raise QuantizeError("per-channel DequantizeLinear needs opset 13 or later")
    inits = {i.name: i for i in model.graph.initializer}
    dequantize = []
    for weight, node in _dequantizable(model, op_types):
        width = bits if isinstance(bits, int) else bits.get(weight)
        if width is not None:
            axis = _weight_axis(node, len(inits[weight].dims)) if per_channel else None
            dequantize.append(_behind_dequantize(model, inits[weight], width, axis)[0])
    _prepend(model.graph, dequantize)
    return len(dequantize)


def _narrow_constants(model: onnx.ModelProto, bits: int) -> tuple[int, int]:
    """Float constants of at least NARROW_CONSTANT_BYTES that no weighted layer or table lookup takes
    (the folded position encodings and RoPE tables: 5 MiB each in the vision encoder, mask decoder and
    memory attention) stored as symmetric int8 / int16 (`bits`, the rung's weight width) per tensor
    behind a DequantizeLinear, in place. A sinusoidal encoding in [-1, 1] keeps about 48 dB at 8 bits
    and 90 at 16; the DequantizeLinear runs per call (a millisecond; ONNX Runtime does not fold it
    back). Weights are the precision's business, and a table's DequantizeLinear would expand the whole
    table every call. Returns (constants, bytes saved)."""
    graph = model.graph
    taken = {n.input[1] for n in graph.node if n.op_type in WIDE_WEIGHT_OP_TYPES and len(n.input) > 1} | \
        {n.input[0] for n in graph.node if n.op_type in TABLE_OP_TYPES} | \
        {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"} | {i.name for i in graph.input}
    large = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.name not in taken
             and 4 * int(np.prod(i.dims)) >= NARROW_CONSTANT_BYTES]
    narrowed = [_behind_dequantize(model, init, bits, None) for init in large]
    _prepend(graph, [node for node, _ in narrowed])
    return len(narrowed), sum(saved for _, saved in narrowed)


def _mixed_weights(src: Path, dst: Path, settings: QuantSettings, feeds: FeedSource,
                   notes: list[str]) -> tuple[str, dict]:
    """int8 weights where the outputs tolerate them, int16 elsewhere, chosen on the calibration feeds.

    Weights are ranked by size, largest first (ties: the later in the graph first, where less of
    the network lies downstream to amplify the rounding), and the longest prefix of that ranking
    stored int8 (the rest int16) whose worst output SQNR against the fp32 graph, over the calibration
    samples, stays at or above `settings.mixed_target_db`, is found by bisection (about log2(weights)
    runs; the error grows with the prefix, not strictly but closely enough for a search whose result
    the gate then measures on the evaluation part, which the search never sees). Size first because
    bytes are the point: in the vision encoder the largest few tensors (the neck's upsampling and
    1x1 convolutions) hold two thirds of the weights and sit at the end of the network, while the
    backbone's many small early layers are what turns int8 rounding into 9.5 dB (untrained weights)."""
    import onnxruntime as ort
    op_types = [t for t in WIDE_WEIGHT_OP_TYPES if t not in settings.keep_float]
    model = _folded(src)
    candidates = _dequantizable(model, op_types)
    if not candidates:
        raise QuantizeError(f"no {'/'.join(op_types)} with constant weights: mixed weights would change nothing")
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    position = {w: i for i, (w, _) in enumerate(candidates)}
    ranked = sorted(position, key=lambda w: (-sizes[w], -position[w]))
    samples = [dict(s) for _, s in zip(range(settings.samples), feeds() if callable(feeds) else feeds)]
    if not samples:
        raise QuantizeError("the calibration feeds are empty")
    options = ort.SessionOptions()
    options.log_severity_level = 3

    def run(proto: onnx.ModelProto) -> list[list[np.ndarray]]:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return [session.run(None, {n: s[n] for n in names}) for s in samples]

    from .metrics import sqnr_db
    reference = run(model)  # fp32: the narrowed constants below are part of every probe's error
    constants, saved = _narrow_constants(model, 8)
    if constants:
        notes.append(f"{constants} large float constants stored int8 behind DequantizeLinear "
                     f"({saved / 2**20:.1f} MiB saved)")
    target = settings.mixed_target_db

    def probe(narrow: int) -> tuple[onnx.ModelProto, float]:
        candidate = onnx.ModelProto()
        candidate.CopyFrom(model)
        _dequantize_weights(candidate, op_types, settings.per_channel,
                            {w: 8 if i < narrow else 16 for i, w in enumerate(ranked)})
        got = run(candidate)
        worst = min(sqnr_db(r, g) for ref, out in zip(reference, got) for r, g in zip(ref, out)
                    if np.issubdtype(r.dtype, np.floating))
        return candidate, worst

    low, high, best, probes = 0, len(ranked), None, 0
    while low < high:  # invariant: a prefix of `low` passes (0: every weight int16), longer than `high` fails
        mid = (low + high + 1) // 2
        candidate, worst = probe(mid)
        probes += 1
        if worst >= target:
            low, best = mid, (candidate, worst)
        else:
            high = mid - 1
    if best is None:
        raise QuantizeError(f"no weight can be int8: the largest alone leaves {worst:.1f} dB < {target:g} dB "
                            "on the calibration part")
    onnx.save(best[0], str(dst))
    narrow_params = sum(sizes[w] for w in ranked[:low])
    share = narrow_params / sum(sizes[w] for w in ranked)
    rest = ", the rest int16" if low < len(ranked) else ""
    notes.append(f"{low} of {len(ranked)} weights int8 ({share:.0%} of the parameters){rest}: "
                 f"{best[1]:.1f} dB on {len(samples)} calibration samples (target {target:g} dB, {probes} probes)")
    granularity = "per channel" if settings.per_channel else "per tensor"
    return (f"mixed int8 / int16 weights {granularity} behind DequantizeLinear (float compute), int8 on the "
            f"largest {low} of {len(ranked)} weights the calibration part tolerates"), {
        "weight_types": ["int8", "int16"], "per_channel": settings.per_channel, "op_types_to_quantize": op_types,
        "int8_weights": low, "int16_weights": len(ranked) - low, "int8_parameter_share": round(share, 4),
        "target_sqnr_db": target, "calibration_sqnr_db": round(best[1], 2), "samples": len(samples),
        "probes": probes, "narrowed_constants": {"count": constants, "bits": 8, "bytes_saved": saved}}


def _nbits(src: Path, dst: Path, settings: QuantSettings, notes: list[str]) -> tuple[str, dict]:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    if not _weight_nodes(src, ("MatMul",)):
        raise QuantizeError("no MatMul with a constant weight: 4-bit weights would change nothing")
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=settings.block_size, is_symmetric=True,
                                     nodes_to_exclude=_excluded(src, settings.keep_float),
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    if "com.microsoft.MatMulNBits" not in op_counts(dst):
        raise QuantizeError("MatMulNBitsQuantizer left every MatMul in float (weights not 2-D constants?)")
    return (f"4-bit weights (MatMulNBits, symmetric blocks of {settings.block_size})",
            {"bits": 4, "block_size": settings.block_size, "symmetric": True})


def _fp16(src: Path, dst: Path, settings: QuantSettings, notes: list[str]) -> tuple[str, dict]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(settings.keep_float))
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=block)
    onnx.save(model, str(dst))
    notes.append("float32 inputs and outputs kept (Cast at the boundary)")
    return "fp16 weights and compute (onnxruntime float16 converter)", {"keep_io_types": True,
                                                                          "op_block_list": block}
