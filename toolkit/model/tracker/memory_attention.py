"""Memory attention of the tracker (checkpoint prefix `tracker.transformer.encoder.`).

Four pre-norm layers condition the current frame's 72x72 features on the memory bank:
RoPE self-attention over the frame, RoPE cross-attention to the memory bank, then an MLP.
The memory bank is given as two parts so its length is a tensor dimension, never a Python
loop: spatial memories (M frames x 5184 tokens, rotated by RoPE like the frame's own grid)
and object-pointer tokens (P tokens, no RoPE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..chunked_attention import chunked_sdpa
from .rope import axial_rope_tables, rotate

DIM = 256
MEM_DIM = 64
GRID = 72  # tokens are cells of the 72x72 feature grid, row-major
NUM_LAYERS = 4
FFN_DIM = 2048
# The encoder adds 0.1 x the frame's position encoding to its input features.
INPUT_POS_SCALE = 0.1


class RoPEAttention(nn.Module):
    """Single-head attention with axial RoPE on queries and (the spatial part of) keys.

    Queries are the frame's GRID*GRID tokens, rotated by `q_rope`, the (cos, sin) tables
    (GRID*GRID, dim/2). Keys are `k_spatial`, rotated by `k_rope` (a table row per key: a whole
    number of grids, each rotated like the query grid), followed by `k_extra` (not rotated).
    """

    def __init__(self, dim: int = DIM, kv_in_dim: int = DIM):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_in_dim, dim)
        self.v_proj = nn.Linear(kv_in_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, q: Tensor, k_spatial: Tensor, v_spatial: Tensor, q_rope: tuple[Tensor, Tensor],
                k_rope: tuple[Tensor, Tensor], k_extra: Tensor | None = None,
                v_extra: Tensor | None = None) -> Tensor:
        """q (B,5184,dim); k/v_spatial (B,G*5184,kv_in_dim); k/v_extra (B,P,kv_in_dim)."""
        q = rotate(self.q_proj(q), *q_rope)
        k = rotate(self.k_proj(k_spatial), *k_rope)
        v = self.v_proj(v_spatial)
        if k_extra is not None:
            k = torch.cat([k, self.k_proj(k_extra)], dim=1)
            v = torch.cat([v, self.v_proj(v_extra)], dim=1)
        out = chunked_sdpa(q[:, None], k[:, None], v[:, None])[:, 0]  # over query chunks: memory
        return self.out_proj(out)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm: x += SelfAttn(norm1 x); x += CrossAttn(norm2 x, memory + pos, memory);
    x += MLP(norm3 x). No position encoding on queries; the memory's on its keys."""

    def __init__(self):
        super().__init__()
        self.self_attn = RoPEAttention(DIM, DIM)
        self.cross_attn_image = RoPEAttention(DIM, MEM_DIM)
        self.linear1 = nn.Linear(DIM, FFN_DIM)
        self.linear2 = nn.Linear(FFN_DIM, DIM)
        self.norm1 = nn.LayerNorm(DIM)
        self.norm2 = nn.LayerNorm(DIM)
        self.norm3 = nn.LayerNorm(DIM)

    def forward(self, x: Tensor, memory: Tensor, memory_pos: Tensor, pointers: Tensor, pointers_pos: Tensor,
                grid_rope: tuple[Tensor, Tensor], memory_rope: tuple[Tensor, Tensor]) -> Tensor:
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y, grid_rope, grid_rope)
        y = self.norm2(x)
        x = x + self.cross_attn_image(y, memory + memory_pos, memory, grid_rope, memory_rope,
                                      pointers + pointers_pos, pointers)
        y = self.norm3(x)
        return x + self.linear2(F.relu(self.linear1(y)))


class MemoryAttention(nn.Module):
    """Condition the current frame on the memory bank (keys `layers.N.*`, `norm.*`).

    Sequence-first like upstream:
      current (5184,B,256), current_pos (5184,B,256),
      memory (M*5184,B,64), memory_pos (M*5184,B,64)  spatial memories of M frames,
      pointers (P,B,64), pointers_pos (P,B,64)        object-pointer tokens (P may be 0)
      -> conditioned features (5184,B,256).
    """

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer() for _ in range(NUM_LAYERS))
        self.norm = nn.LayerNorm(DIM)
        cos, sin = axial_rope_tables(DIM, GRID, GRID)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, current: Tensor, current_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                pointers: Tensor, pointers_pos: Tensor) -> Tensor:
        x = (current + INPUT_POS_SCALE * current_pos).transpose(0, 1)
        memory, memory_pos = memory.transpose(0, 1), memory_pos.transpose(0, 1)
        pointers, pointers_pos = pointers.transpose(0, 1), pointers_pos.transpose(0, 1)
        # The frame's own tokens use the tables as they are: a table gathered by a constant index
        # is folded by exporters and graph optimisers into a copy per use (2.5 MiB each). Each of
        # the memory's grids is rotated like the frame; indexing the tables by token % grid (not
        # reshaping to frames) keeps the frame count a free dimension when exported.
        cell = torch.arange(memory.shape[1], device=memory.device) % (GRID * GRID)
        grid_rope, memory_rope = (self.rope_cos, self.rope_sin), (self.rope_cos[cell], self.rope_sin[cell])
        for layer in self.layers:
            x = layer(x, memory, memory_pos, pointers, pointers_pos, grid_rope, memory_rope)
        return self.norm(x).transpose(0, 1)
