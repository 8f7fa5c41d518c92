"""RoIAlign (average pooling of bilinear samples, Mask R-CNN) in plain torch.

Reproduces `torchvision.ops.roi_align(..., sampling_ratio=-1)` as computed by torchvision's
pure-PyTorch implementation (the one the golden reference ran): each output bin averages a
grid of ceil(bin extent) x ceil(bin extent) bilinear samples; sample coordinates below 0 are
clamped to 0 and those past the last row/column read the last row/column.

Bilinear sampling on a regular grid is separable, so the pooled value of bin (p, q) is
    sum_{h,w} Wy[p, h] * F[h, w] * Wx[q, w] / count,
where Wy (Wx) accumulates, over the bin's sample rows (columns), the interpolation weights
that each sample puts on each feature row (column). The whole operator is then two
batched matrix products with weights built from comparisons, without gathers or loops over
boxes, and exports as plain tensor ops.
"""

import torch
from torch import Tensor


def _axis_weights(start: Tensor, length: Tensor, bins: int, size: int) -> tuple[Tensor, Tensor]:
    """Per-bin interpolation weights along one axis.

    start, length: (...,) extent of each box on this axis, in feature cells.
    Returns (weights (..., bins, size), samples per bin (...,)).
    """
    bin_size = length / bins
    grid = torch.ceil(length / bins)  # adaptive number of samples per bin
    # The number of samples is data dependent; like the reference, evaluate up to `size`
    # samples per bin and drop those past `grid`.
    sample = torch.arange(size, dtype=start.dtype, device=start.device)
    bin_index = torch.arange(bins, dtype=start.dtype, device=start.device)
    pos = (
        start[..., None, None]
        + bin_index[:, None] * bin_size[..., None, None]
        + (sample + 0.5) * bin_size[..., None, None] / grid[..., None, None]
    )  # (..., bins, samples)
    used = sample < grid[..., None, None]

    pos = pos.clamp(min=0.0)
    low = torch.floor(pos)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = pos - low

    cells = torch.arange(size, dtype=start.dtype, device=start.device)
    per_sample = (1.0 - frac)[..., None] * (cells == low[..., None]) + frac[..., None] * (
        cells == high[..., None]
    )  # (..., bins, samples, size)
    per_sample = torch.where(used[..., None], per_sample, torch.zeros_like(per_sample))
    # a non-negative axis: ONNX Runtime 1.30 (the newest onnxruntime-node / -web on npm) does not reduce a
    # negative axis of an empty tensor (no boxes), and the einsum below then fails on the rank
    return per_sample.sum(per_sample.dim() - 2), grid


def roi_align(features: Tensor, boxes: Tensor, output_size: int, spatial_scale: float = 1.0,
              aligned: bool = False) -> Tensor:
    """Pool a square `output_size` grid from each box.

    features: (B, C, H, W); boxes: (B, N, 4) [x0, y0, x1, y1] in input coordinates (times
    `spatial_scale` gives feature cells), box n of image b pools from features[b].
    aligned=False is the legacy convention (boxes shorter than one cell are stretched to one);
    aligned=True shifts boxes by half a cell first.
    Returns (B, N, C, output_size, output_size).
    """
    height, width = features.shape[-2:]
    offset = 0.5 if aligned else 0.0
    x0, y0, x1, y1 = (boxes * spatial_scale - offset).unbind(-1)
    box_w = x1 - x0
    box_h = y1 - y0
    if not aligned:
        box_w = box_w.clamp(min=1.0)
        box_h = box_h.clamp(min=1.0)
    weights_y, grid_h = _axis_weights(y0, box_h, output_size, height)  # (B, N, P, H)
    weights_x, grid_w = _axis_weights(x0, box_w, output_size, width)  # (B, N, P, W)
    rows = torch.einsum("bnph,bchw->bncpw", weights_y, features)
    # A matmul, not a second einsum: ONNX Runtime's Einsum crashes (SIGFPE) when N = 0.
    pooled = rows @ weights_x.transpose(-1, -2)[:, :, None]
    count = (grid_h * grid_w).clamp(min=1.0)
    return pooled / count[..., None, None, None]
