"""SAM prompt encoder of the tracker (checkpoint prefix `tracker.sam_prompt_encoder.`).

Points become sparse tokens (a random-Fourier encoding of the position plus a learned
embedding of the label); a mask logit map becomes a dense embedding, and without a mask a
learned "no mask" vector fills the 72x72 grid.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from toolkit.model.common import LayerNorm2d

IMAGE_SIZE = 1008
EMBED_SIZE = 72  # image embedding grid (stride 14)
MASK_INPUT_SIZE = 4 * EMBED_SIZE  # 288: the low-res mask grid the dense prompt takes
EMBED_DIM = 256
MASK_IN_CHANS = 16


class RandomFourierPositionEncoding(nn.Module):
    """sin/cos of coordinates in [0, 1]^2 projected on a fixed Gaussian matrix (2, dim/2).

    The matrix is a checkpoint buffer (`pe_layer.positional_encoding_gaussian_matrix`).
    """

    def __init__(self, num_pos_feats: int = EMBED_DIM // 2):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.zeros(2, num_pos_feats))

    def encode(self, coords: Tensor) -> Tensor:
        """(..., 2) normalised (x, y) -> (..., 2 * num_pos_feats) as [sin, cos]."""
        proj = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def grid(self, height: int, width: int) -> Tensor:
        """Encoding of the cell centres of an (height, width) grid -> (dim, height, width)."""
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        coords = torch.stack(
            [xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1
        )
        return self.encode(coords).permute(2, 0, 1)


class SamPromptEncoder(nn.Module):
    """points (B,P,2) in 1008-pixel (x, y) + labels (B,P) [+ mask logits (B,1,288,288)]
    -> sparse (B,P+1,256), dense (B,256,72,72).

    Labels: 1 positive click, 0 negative click, 2 / 3 box top-left / bottom-right corner,
    -1 padding. A padding token is always appended (the tracker never passes a separate
    box; boxes arrive as two points with labels 2 and 3).
    """

    def __init__(self):
        super().__init__()
        self.pe_layer = RandomFourierPositionEncoding(EMBED_DIM // 2)
        # One embedding per label 0..3 (negative, positive, box corners).
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, EMBED_DIM) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, EMBED_DIM)
        # Indices 0..6 reproduce the checkpoint's Sequential layout.
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, MASK_IN_CHANS // 4, kernel_size=2, stride=2),
            LayerNorm2d(MASK_IN_CHANS // 4),
            nn.GELU(),
            nn.Conv2d(MASK_IN_CHANS // 4, MASK_IN_CHANS, kernel_size=2, stride=2),
            LayerNorm2d(MASK_IN_CHANS),
            nn.GELU(),
            nn.Conv2d(MASK_IN_CHANS, EMBED_DIM, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, EMBED_DIM)

    def dense_pe(self) -> Tensor:
        """Position encoding of the image embedding grid, (1, 256, 72, 72)."""
        return self.pe_layer.grid(EMBED_SIZE, EMBED_SIZE)[None]

    def embed_points(self, points: Tensor, labels: Tensor) -> Tensor:
        """(B,P,2) pixel coords + (B,P) labels -> (B,P+1,256) with a trailing padding token."""
        batch = points.shape[0]
        # Pixel centres; the padding point is appended after the shift, at (0, 0).
        points = torch.cat([points + 0.5, points.new_zeros(batch, 1, 2)], dim=1)
        labels = torch.cat([labels, labels.new_full((batch, 1), -1)], dim=1)[..., None]
        embedding = self.pe_layer.encode(points / IMAGE_SIZE)
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight.expand_as(embedding), embedding)
        for label, table in enumerate(self.point_embeddings):
            embedding = torch.where(labels == label, embedding + table.weight, embedding)
        return embedding

    def forward(self, points: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        sparse = self.embed_points(points, labels)
        if mask is not None:
            dense = self.mask_downscaling(mask)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                points.shape[0], -1, EMBED_SIZE, EMBED_SIZE
            )
        return sparse, dense
