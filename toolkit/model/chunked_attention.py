"""Attention over query chunks: the same numbers as one attention call, a fraction of the memory.

Softmax runs per query row, so attending chunk by chunk of queries gives each row exactly the
keys, weights and values of the whole call (float rounding of the matrix products aside). The
exported graphs then hold one (chunk x keys) score matrix at a time instead of (queries x keys):
for the fusion encoder's self-attention 5,184 x 5,184 x 8 heads (860 MB in fp32) becomes 8 chunks
of 648 queries (107 MB); for memory attention's cross-attention to 7 memory frames, 5,184 x
36,304 (753 MB per object) becomes 94 MB. The chunk count is fixed and the query count static
(the 72x72 grid), so the exporters unroll it into plain MatMul / Softmax nodes on every target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QUERY_CHUNKS = 8  # 5184 = 8 x 648 grid tokens


def chunked_sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                 chunks: int = QUERY_CHUNKS) -> Tensor:
    """`F.scaled_dot_product_attention(q, k, v, attn_mask)` computed over `chunks` slices of the
    queries (dim -2, a static size); `attn_mask` must broadcast over the query dimension."""
    size = -(-q.shape[-2] // chunks)
    return torch.cat([F.scaled_dot_product_attention(part, k, v, attn_mask=attn_mask)
                      for part in q.split(size, dim=-2)], dim=-2)


def split_heads(mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The packed in-projection of `mha` (sequence-first (L, B, E) inputs, with biases) ->
    q, k, v as (B, H, L, E/H), torch's head layout."""
    e, h = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias

    def heads(x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], x.shape[1], h, e // h).permute(1, 2, 0, 3)
    return tuple(heads(F.linear(x, w[i * e:(i + 1) * e], b[i * e:(i + 1) * e]))
                 for i, x in enumerate((query, key, value)))


def merge_heads(mha: nn.MultiheadAttention, out: Tensor) -> Tensor:
    """Attention output (B, H, L, E/H) -> `mha`'s output projection, sequence-first (L, B, E)."""
    return mha.out_proj(out.permute(2, 0, 1, 3).flatten(2))


def multihead_attention(mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                        key_padding_mask: Tensor | None = None, chunks: int = QUERY_CHUNKS) -> Tensor:
    """`mha(query, key, value, key_padding_mask, need_weights=False)[0]` (sequence-first, packed
    in-projection, with biases) with the attention computed over query chunks."""
    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # True = attend
    return merge_heads(mha, chunked_sdpa(*split_heads(mha, query, key, value), mask, chunks))
