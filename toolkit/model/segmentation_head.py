"""Mask head of the detector (checkpoint prefix ``detector.segmentation_head.``).

The fused encoder memory first attends to the prompt, then replaces the coarsest FPN level; a
small FPN-style pixel decoder upsamples it to stride 4 (288x288), where every query's embedding
is dotted with per-pixel instance embeddings to give its mask logits.
"""

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.model.common import MLP


class PixelDecoder(nn.Module):
    """Top-down pathway: nearest upsample, add the finer level, 3x3 conv, GroupNorm, ReLU."""

    def __init__(self, dim: int = 256, num_stages: int = 3):
        super().__init__()
        # The checkpoint holds three stages; with the three FPN levels the detector uses (the
        # fourth is scalped), only the first two run, exactly as upstream.
        self.conv_layers = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in range(num_stages))
        self.norms = nn.ModuleList(nn.GroupNorm(8, dim) for _ in range(num_stages))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: finest first, e.g. [(B,C,288,288), (B,C,144,144), (B,C,72,72)] -> (B,C,288,288)."""
        x = feats[-1]
        for stage, finer in enumerate(reversed(feats[:-1])):
            x = finer + F.interpolate(x, size=finer.shape[-2:], mode="nearest")
            x = F.relu(self.norms[stage](self.conv_layers[stage](x)))
        return x


class MaskPredictor(nn.Module):
    """Mask logits = MLP(query) . instance embedding, for every pixel."""

    def __init__(self, dim: int = 256):
        super().__init__()
        self.mask_embed = MLP(dim, dim, dim, 3)

    def forward(self, queries: torch.Tensor, pixel_embed: torch.Tensor) -> torch.Tensor:
        """queries (B, Q, C), pixel_embed (B, C, H, W) -> (B, Q, H, W)."""
        b, c, h, w = pixel_embed.shape
        masks = torch.matmul(self.mask_embed(queries), pixel_embed.reshape(b, c, h * w))
        return masks.reshape(b, -1, h, w)


class SegmentationHead(nn.Module):
    """Instance masks for every query plus a one-channel semantic map."""

    def __init__(self, dim: int = 256, num_heads: int = 8):
        super().__init__()
        self.pixel_decoder = PixelDecoder(dim)
        self.mask_predictor = MaskPredictor(dim)
        self.cross_attend_prompt = nn.MultiheadAttention(dim, num_heads)  # seq-first, as upstream
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.semantic_seg_head = nn.Conv2d(dim, 1, kernel_size=1)
        self.instance_seg_head = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(
        self,
        backbone_fpn: list[torch.Tensor],
        queries: torch.Tensor,
        memory: torch.Tensor,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """
        backbone_fpn: FPN levels, finest first ((B,C,288,288), (B,C,144,144), (B,C,72,72)).
        queries: last decoder layer's queries, batch-first (B, Q, C).
        memory: fusion encoder output over the coarsest level, seq-first (H*W, B, C).
        prompt: (S, B, C) seq-first, prompt_mask: (B, S) True = padding.
        Returns pred_masks (B, Q, 288, 288) and semantic_seg (B, 1, 288, 288), both logits.
        """
        attended = self.cross_attend_prompt(
            self.cross_attn_norm(memory), prompt, prompt, key_padding_mask=prompt_mask,
            need_weights=False,
        )[0]
        memory = memory + attended
        # The prompt-conditioned memory replaces the coarsest FPN level (same grid), as upstream.
        coarsest = backbone_fpn[-1]
        memory_map = memory.permute(1, 2, 0).reshape(coarsest.shape)
        pixel_embed = self.pixel_decoder([*backbone_fpn[:-1], memory_map])
        return {
            "pred_masks": self.mask_predictor(queries, self.instance_seg_head(pixel_embed)),
            "semantic_seg": self.semantic_seg_head(pixel_embed),
        }
