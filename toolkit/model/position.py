"""Sine position encodings (DETR style) for feature maps, points and boxes."""

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine encoding with `num_pos_feats` channels.

    The first half of the channels encodes the row (y), the second half the column (x).
    Within each half, channel pair (2k, 2k+1) holds (sin, cos) of the coordinate divided by
    `temperature ** (2k / half)`. Coordinates are normalised to (0, 1] and scaled by 2*pi.
    It has no state: maps are computed from the input's shape, so a fixed-size export folds
    them into constants.
    """

    def __init__(self, num_pos_feats: int = 256, temperature: float = 10000.0):
        super().__init__()
        self.half = num_pos_feats // 2
        self.temperature = temperature
        self.scale = 2 * math.pi

    def _embed_axis(self, coords: Tensor) -> Tensor:
        """(N,) coordinates in [0, 1] -> (N, half) interleaved sin/cos features."""
        index = torch.arange(self.half, dtype=torch.float32, device=coords.device)
        dim_t = torch.pow(self.temperature, 2 * torch.div(index, 2, rounding_mode="floor") / self.half)
        angles = (coords * self.scale)[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    def encode_xy(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised point coordinates (N,), (N,) -> (pos_x, pos_y), each (N, half)."""
        return self._embed_axis(x), self._embed_axis(y)

    def encode_boxes(self, cx: Tensor, cy: Tensor, w: Tensor, h: Tensor) -> Tensor:
        """Normalised boxes as four (N,) tensors -> (N, 2*half + 2): [pos_y, pos_x, h, w]."""
        pos_x, pos_y = self.encode_xy(cx, cy)
        return torch.cat((pos_y, pos_x, h[:, None], w[:, None]), dim=1)

    def forward(self, feature_map: Tensor) -> Tensor:
        """(B, C, H, W) feature map -> (B, num_pos_feats, H, W) encoding of its pixel grid,
        computed in float32 and returned in the feature map's dtype."""
        batch, _, height, width = feature_map.shape
        device = feature_map.device
        # Pixel i (1-based) sits at i / size; the epsilon matches the reference's normalisation.
        rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        pos_y = self._embed_axis(rows / (rows[-1:] + 1e-6))  # (H, half)
        pos_x = self._embed_axis(cols / (cols[-1:] + 1e-6))  # (W, half)
        pos = torch.cat(
            (
                pos_y.t()[:, :, None].expand(self.half, height, width),
                pos_x.t()[:, None, :].expand(self.half, height, width),
            ),
            dim=0,
        )
        return pos[None].expand(batch, -1, -1, -1).to(feature_map.dtype)
