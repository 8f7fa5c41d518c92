"""FLOPs of a component, counted from its ONNX graph (or, without one, from the PyTorch graph).

Counted: the multiply-accumulate operators, 2 FLOPs per multiply-add, at the shapes of the feeds
being benchmarked: Conv, ConvTranspose, MatMul, Gemm, Einsum (two-operand), and the fused
attention operators (ONNX `Attention`, `com.microsoft` `Attention` / `MultiHeadAttention`) as
their two matrix products. Elementwise operators, normalisation, softmax, resize and reductions
are not counted: the same rule as `torch.utils.flop_counter` (which counts mm / bmm / addmm /
convolution / scaled-dot-product attention), used for components without an ONNX artifact.

Shapes come from shape inference (ONNX Runtime's symbolic pass, else ONNX's) with the graph
inputs fixed to the feeds' shapes, so symbolic dimensions (boxes, memory frames...) resolve to
the benchmarked values. A node whose shapes stay unknown is listed in `uncounted`, never guessed.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

ONNX_SOURCE = "onnx-graph"
TORCH_SOURCE = "torch-flop-counter"


def _shapes(model) -> dict[str, list[int | None]]:
    import onnx

    shapes: dict[str, list[int | None]] = {}
    graph = model.graph
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in graph.node:  # Constant nodes carry their value
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(onnx.numpy_helper.to_array(attr.t).shape)
    return shapes


def _known(*shapes) -> bool:
    return all(s is not None and all(d is not None for d in s) for s in shapes)


def _attr(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_flops(node, shapes: Mapping[str, list]) -> int | None:
    """FLOPs of one node, 0 for an operator that is not counted, None when shapes are unknown."""
    op = node.op_type
    def get(i: int):
        return shapes.get(node.input[i]) if len(node.input) > i and node.input[i] else None
    out = shapes.get(node.output[0]) if node.output else None
    if op == "Conv":
        w = get(1)
        if not _known(w, out):
            return None
        # each output element: C_in/group * kh * kw multiply-adds
        return 2 * int(np.prod(out)) * int(np.prod(w[1:]))
    if op == "ConvTranspose":
        x, w = get(0), get(1)
        if not _known(x, w):
            return None
        # each input element is scattered to C_out/group * kh * kw outputs
        return 2 * int(np.prod(x)) * int(np.prod(w[1:]))
    if op == "MatMul":
        a = get(0)
        if not _known(a, out):
            return None
        return 2 * int(np.prod(out)) * a[-1]
    if op == "Gemm":
        a = get(0)
        if not _known(a, out):
            return None
        k = a[0] if _attr(node, "transA", 0) else a[1]
        return 2 * int(np.prod(out)) * k
    if op == "Einsum":
        if len(node.input) != 2 or not _known(get(0), get(1), out):
            return None
        equation = _attr(node, "equation", b"").decode().replace(" ", "")
        lhs, rhs = equation.split("->")
        a_labels, b_labels = lhs.split(",")
        sizes = dict(zip(a_labels, get(0))) | dict(zip(b_labels, get(1)))
        contracted = set(a_labels) & set(b_labels) - set(rhs)
        return 2 * int(np.prod(out)) * int(np.prod([sizes[c] for c in contracted] or [1]))
    if op in ("Attention", "MultiHeadAttention"):
        q, k = get(0), get(1)
        if not _known(q, k, out) or len(q) != len(k):
            return None
        # (B, S_q, hidden) / (B, S_kv, hidden) or 4-D with heads: Q K^T and A V, 2 FLOPs each
        q_tokens, kv_tokens = int(np.prod(q[:-1])), k[-2]
        return 2 * 2 * q_tokens * kv_tokens * q[-1]
    return 0


def _infer_shapes(model):
    """ONNX Runtime's symbolic shape inference where it is installed (it resolves shapes computed
    from other shapes, as in attention over a variable number of memories), else ONNX's."""
    from onnx import shape_inference
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - not installed, or a graph it cannot take: the standard pass
        return shape_inference.infer_shapes(model, data_prop=True)


def count_onnx(path: str | Path, feeds: Mapping[str, np.ndarray]) -> dict:
    """FLOPs of the graph at the shapes of `feeds` (see `_result`)."""
    import onnx

    model = onnx.load(str(path))
    for inp in model.graph.input:
        if inp.name not in feeds:
            continue
        dims = inp.type.tensor_type.shape.dim
        for d, v in zip(dims, np.shape(feeds[inp.name])):
            d.ClearField("dim_param")
            d.dim_value = int(v)
    model = _infer_shapes(model)
    shapes = _shapes(model)
    by_op: Counter = Counter()
    uncounted: Counter = Counter()
    for node in model.graph.node:
        flops = _node_flops(node, shapes)
        if flops is None:
            uncounted[node.op_type] += 1
        elif flops:
            by_op[node.op_type] += flops
    return _result(sum(by_op.values()), ONNX_SOURCE, dict(by_op), dict(uncounted))


def count_torch(module, feeds: Mapping[str, np.ndarray], input_names: list[str]) -> dict:
    """The same figure from PyTorch (`torch.utils.flop_counter.FlopCounterMode`, one forward).

    `nn.MultiheadAttention`'s inference fast path is one fused kernel the counter does not see
    (the attention products would be missing): it is turned off while counting. Parameters stop
    requiring gradients meanwhile (the counter's module tracker hooks tensors that require them).
    The CPU flash-attention kernel has no formula in the counter: it gets the one of the others.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    cpu_kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    params = [p for p in module.parameters() if p.requires_grad]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    counter = FlopCounterMode(display=False, custom_mapping={cpu_kernel: cpu_attention} if cpu_kernel else None)
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad(), counter:
            module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for p in params:
            p.requires_grad_(True)
    by_op = {str(op).rsplit(".", 1)[-1]: v for op, v in counter.get_flop_counts().get("Global", {}).items()}
    return _result(counter.get_total_flops(), TORCH_SOURCE, by_op, {})


def _result(flops: int, source: str, by_op: Mapping[str, int], uncounted: Mapping[str, int]) -> dict:
    """{"flops", "gflop", "source", "by_op" (FLOPs per operator type), "uncounted" (op -> nodes)}."""
    return {"flops": int(flops), "gflop": round(flops / 1e9, 6), "source": source,
            "by_op": {k: int(v) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "uncounted": dict(uncounted)}
