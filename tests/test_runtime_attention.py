"""Memory-lean attention (toolkit/model/chunked_attention.py): attention over query chunks equals
one attention call, for the fusion encoder's multi-head form (with a key-padding mask) and the
memory attention's single-head form; the golden tests of both modules check the model itself."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.model.chunked_attention import chunked_sdpa, multihead_attention


@pytest.mark.parametrize("queries,chunks", [(5184, 8), (100, 8), (7, 3), (64, 1)])
def test_chunked_sdpa_equals_one_call(queries, chunks):
    g = torch.Generator().manual_seed(queries)
    q, k, v = (torch.randn(2, 1, n, 32, generator=g) for n in (queries, 300, 300))
    mask = torch.rand(2, 1, 1, 300, generator=g) > 0.2
    for m in (None, mask):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        torch.testing.assert_close(chunked_sdpa(q, k, v, m, chunks), ref, rtol=1e-5, atol=1e-6)


def test_multihead_attention_equals_torch_module():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(256, 8).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    query, key = torch.randn(500, 2, 256), torch.randn(40, 2, 256)
    padding = torch.zeros(2, 40, dtype=torch.bool)
    padding[1, 30:] = True
    with torch.no_grad():
        ref = mha(query, key, key, key_padding_mask=padding, need_weights=False)[0]
        torch.testing.assert_close(multihead_attention(mha, query, key, key, padding), ref, rtol=1e-5, atol=1e-5)
        ref = mha(query, query, query, need_weights=False)[0]
        torch.testing.assert_close(multihead_attention(mha, query, query, query), ref, rtol=1e-5, atol=1e-5)
