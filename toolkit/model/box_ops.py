"""Box helpers shared by the SAM3 detector: format conversion, logit-space offsets, sine embedding."""

import math

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) [cx, cy, w, h] -> (..., 4) [x0, y0, x1, y1]."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """Logit of a probability clamped to [eps, 1 - eps], so that saturated boxes stay finite."""
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def box_sine_embed(boxes: Tensor, num_feats: int = 256) -> Tensor:
    """(Q, B, 4) normalised [cx, cy, w, h] -> (Q, B, 2 * num_feats) sine features.

    Each coordinate gets num_feats // 2 channels of interleaved sin/cos of
    2*pi*coord / 10000**(2*(k//2) / (num_feats//2)); the blocks are ordered (cy, cx, w, h).
    """
    half = num_feats // 2
    index = torch.arange(half, dtype=torch.float32, device=boxes.device)
    dim_t = torch.pow(10000.0, 2 * torch.div(index, 2, rounding_mode="floor") / half)

    def embed(coord: Tensor) -> Tensor:
        angles = (coord * (2 * math.pi))[:, :, None] / dim_t
        return torch.stack((angles[:, :, 0::2].sin(), angles[:, :, 1::2].cos()), dim=3).flatten(2)

    cx, cy, w, h = boxes.unbind(-1)
    return torch.cat((embed(cy), embed(cx), embed(w), embed(h)), dim=2)
