"""SAM3 fusion encoder: image tokens attend to themselves and to the prompt tokens.

Checkpoint prefix `detector.transformer.encoder.`: six `layers.N` of `FusionEncoderLayer`.
The same pre-norm layer, with positions applied elsewhere, is the geometry encoder's layer.
All sequences are seq-first, (tokens, B, C).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunked_attention import multihead_attention


class FusionEncoderLayer(nn.Module):
    """Pre-norm block: self-attention, cross-attention to `memory`, ReLU FFN; each residual.

    `tgt_pos` (if given) is added to the self-attention queries and keys only;
    `memory_pos` (if given) to the cross-attention keys only.
    """

    def __init__(self, d_model: int = 256, num_heads: int = 8, ffn_dim: int = 2048):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads)
        self.cross_attn_image = nn.MultiheadAttention(d_model, num_heads)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        # The fusion encoder's 5184-token self-attention runs over query chunks (memory); the
        # geometry encoder reuses this layer on a few dynamic tokens, unchunked.
        self.chunked_self_attention = False

    def forward(self, tgt: Tensor, memory: Tensor, tgt_pos: Tensor | None = None,
                memory_pos: Tensor | None = None,
                memory_padding_mask: Tensor | None = None) -> Tensor:
        """tgt (T, B, C), memory (S, B, C), memory_padding_mask (B, S) True = padding."""
        x = self.norm1(tgt)
        q = x if tgt_pos is None else x + tgt_pos
        if self.chunked_self_attention:
            tgt = tgt + multihead_attention(self.self_attn, q, q, x)
        else:
            tgt = tgt + self.self_attn(q, q, x, need_weights=False)[0]
        x = self.norm2(tgt)
        keys = memory if memory_pos is None else memory + memory_pos
        tgt = tgt + self.cross_attn_image(
            x, keys, memory, key_padding_mask=memory_padding_mask, need_weights=False
        )[0]
        return tgt + self.linear2(F.relu(self.linear1(self.norm3(tgt))))


class FusionEncoder(nn.Module):
    """Conditions the 72x72 image tokens on the prompt (text tokens + geometry tokens).

    Single feature level, no padding of the image, no pooled-text injection (the
    EfficientSAM3 configuration); the image position encoding enters every self-attention.
    """

    def __init__(self, d_model: int = 256, num_layers: int = 6, num_heads: int = 8,
                 ffn_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(
            FusionEncoderLayer(d_model, num_heads, ffn_dim) for _ in range(num_layers)
        )
        for layer in self.layers:
            layer.chunked_self_attention = True

    def forward(self, image_features: Tensor, image_pos: Tensor, prompt: Tensor,
                prompt_mask: Tensor) -> dict[str, Tensor]:
        """
        image_features, image_pos: (B, C, H, W) last pyramid level and its position encoding.
        prompt: (L, B, C); prompt_mask: (B, L) bool, True = padding.

        Returns memory (H*W, B, C), pos_embed (H*W, B, C), memory_text (the prompt, unchanged),
        and the single-level bookkeeping of the reference: level_start_index (1,),
        spatial_shapes (1, 2) int64 [[H, W]], valid_ratios (B, 1, 2) (all ones: no padding).
        """
        batch, _, height, width = image_features.shape
        memory = image_features.flatten(2).permute(2, 0, 1)
        pos = image_pos.flatten(2).permute(2, 0, 1)
        for layer in self.layers:
            memory = layer(memory, prompt, tgt_pos=pos, memory_padding_mask=prompt_mask)
        device = memory.device
        return {
            "memory": memory,
            "pos_embed": pos,
            "memory_text": prompt,
            "level_start_index": torch.zeros(1, dtype=torch.int64, device=device),
            "spatial_shapes": torch.tensor([[height, width]], dtype=torch.int64, device=device),
            "valid_ratios": torch.ones(batch, 1, 2, device=device),
        }
