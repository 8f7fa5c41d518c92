"""Axial rotary position encoding (RoPE) in real arithmetic, for the memory attention.

The tracker rotates queries and keys of its memory attention by angles that depend on the
token's (x, y) cell in the 72x72 feature grid. Channel pairs (2i, 2i+1) are treated as one
complex number: the first half of the pairs rotates with the column x, the second half with
the row y, with frequencies theta ** (-4k / dim). Upstream stores complex tables; here the
same rotation uses cos/sin tables so it exports to formats without complex types.
"""
from __future__ import annotations

import torch
from torch import Tensor


def axial_rope_tables(dim: int, width: int, height: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin tables, each (width*height, dim // 2), tokens in row-major (y, x) order."""
    quarter = dim // 4
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[:quarter].float() / dim))  # (dim/4,)
    token = torch.arange(width * height, dtype=torch.float32)
    x = token % width
    y = torch.div(token, width, rounding_mode="floor")
    angles = torch.cat([torch.outer(x, freqs), torch.outer(y, freqs)], dim=-1)  # (N, dim/2)
    return torch.cos(angles), torch.sin(angles)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the channel pairs of `x` (..., N, dim) by the angles of `cos`/`sin` (N, dim/2)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2)
