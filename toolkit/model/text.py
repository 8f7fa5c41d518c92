"""MobileCLIP-S1 text encoder with the 512 -> 256 projector into SAM3's model width.

Checkpoint prefix: ``detector.backbone.language_backbone.`` (``encoder.*``, ``projector.*``).
Input is token ids from :class:`toolkit.pipeline.tokenizer.Tokenizer`; tokenisation stays outside so the
module exports from ids. Every token attends to every other one, padding included: the S1
tower has no causal mask and upstream passes no padding mask.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

WIDTH = 512
DEPTH = 12
HEADS = 8
FFN_WIDTH = 2048
VOCAB_SIZE = 49408
MAX_CONTEXT = 77
SAM_WIDTH = 256


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv_proj`` (outputs ordered q, k, v; head-major)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv_proj(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer.

    The ``nn.Sequential`` child names reproduce the checkpoint's indices; upstream's dropout
    slots (``pre_norm_mha.2``, ``pre_norm_ffn.3``/``.5``) hold no weights and are left out.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.pre_norm_mha = nn.Sequential(OrderedDict(
            [("0", nn.LayerNorm(dim)), ("1", SelfAttention(dim, num_heads))]
        ))
        self.pre_norm_ffn = nn.Sequential(OrderedDict(
            [("0", nn.LayerNorm(dim)), ("1", nn.Linear(dim, ffn_dim)), ("2", nn.GELU()),
             ("4", nn.Linear(ffn_dim, dim))]
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pre_norm_mha(x)
        return x + self.pre_norm_ffn(x)


class PositionTable(nn.Module):
    """Learned positions ``pos_embed`` (1, 1, 77, dim); shorter contexts use the first rows."""

    def __init__(self, max_length: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, max_length, dim))

    def forward(self, length: int) -> torch.Tensor:
        return self.pos_embed[0, :, :length]  # (1, length, dim)


class MobileClipTextTransformer(nn.Module):
    """MobileCLIP-S1 text tower ("base" variant): 12 pre-norm layers, width 512, 8 heads."""

    def __init__(self):
        super().__init__()
        self.embedding_layer = nn.Embedding(VOCAB_SIZE, WIDTH)
        # Doubly nested to match the key ``positional_embedding.pos_embed.pos_embed``.
        self.positional_embedding = nn.ModuleDict({"pos_embed": PositionTable(MAX_CONTEXT, WIDTH)})
        self.transformer = nn.ModuleList(
            TransformerLayer(WIDTH, HEADS, FFN_WIDTH) for _ in range(DEPTH)
        )
        self.final_layer_norm = nn.LayerNorm(WIDTH)
        # CLIP's pooled-text projection. SAM3 uses every token, never the pooled vector, so this
        # is only loaded (the checkpoint has it).
        self.projection_layer = nn.Parameter(torch.zeros(WIDTH, WIDTH))

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids, L <= 77 -> (B, L, 512) token + position embeddings (no scaling)."""
        positions = self.positional_embedding["pos_embed"](token_ids.shape[1])
        return self.embedding_layer(token_ids) + positions

    def encode(self, embeds: torch.Tensor) -> torch.Tensor:
        """(B, L, 512) embeddings -> (B, L, 512) final-normed features of every token."""
        x = embeds
        for layer in self.transformer:
            x = layer(x)
        return self.final_layer_norm(x)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, 512) features of every token (upstream's ``return_all_tokens``)."""
        return self.encode(self.embed(token_ids))


class TextEncoder(nn.Module):
    """Token ids -> SAM3 text prompt: padding mask, 256-wide memory, 512-wide input embeddings."""

    def __init__(self):
        super().__init__()
        self.encoder = MobileClipTextTransformer()
        self.projector = nn.Linear(WIDTH, SAM_WIDTH)

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """token_ids (B, L) int64, L <= 77 (77, or a cut context such as 16/32).

        Returns ``pad_mask`` (B, L) bool, True at padding (id 0); ``memory`` (L, B, 256), the
        projected features; ``embeds`` (L, B, 512), the transformer's input embeddings.
        """
        embeds = self.encoder.embed(token_ids)
        memory = self.projector(self.encoder.encode(embeds))
        pad_mask = token_ids == 0
        return pad_mask, memory.transpose(0, 1), embeds.transpose(0, 1)
