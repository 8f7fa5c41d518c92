"""SAM mask decoder of the tracker (checkpoint prefix `tracker.sam_mask_decoder.`).

A two-way transformer lets output tokens (object score, IoU, 4 mask tokens) and the prompt
tokens attend to the 72x72 image embedding and back; the mask tokens then pass hypernetwork
MLPs whose outputs are dotted with an upscaled (288x288) embedding to give mask logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.model.common import MLP, LayerNorm2d

EMBED_DIM = 256
NUM_MASK_TOKENS = 4  # token 0: single-mask output, tokens 1..3: multimask outputs
# Stability fallback for single-mask output (the tracker's sam_mask_decoder_extra_args).
STABILITY_DELTA = 0.05
STABILITY_THRESH = 0.98


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections down to `embed_dim // downsample_rate`."""

    def __init__(self, embed_dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        internal = embed_dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, internal)
        self.k_proj = nn.Linear(embed_dim, internal)
        self.v_proj = nn.Linear(embed_dim, internal)
        self.out_proj = nn.Linear(internal, embed_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class MLPBlock(nn.Module):
    """lin1 -> ReLU -> lin2 (key names `lin1`, `lin2`)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention;
    post-norm after each. The first block feeds tokens without their position encoding."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool):
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """image (B,C,H,W) + its PE (B,C,H,W) + tokens (B,N,C) -> tokens (B,N,C), image (B,HW,C)."""

    def __init__(self, dim: int = EMBED_DIM, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0)) for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class SamMaskDecoder(nn.Module):
    """Mask decoder with high-resolution skip features and an object-score head.

    `conv_s0` / `conv_s1` project the tracker's 288x288 and 144x144 pyramid levels to 32 and
    64 channels; upstream applies them once per frame (in `forward_image`), so they are exposed
    through `project_high_res` and `forward` takes the projected maps.
    """

    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        self.transformer = TwoWayTransformer(dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(NUM_MASK_TOKENS, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        # Indices 0..4 reproduce the checkpoint's Sequential layout (1 and 4: LayerNorm2d, GELU).
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(NUM_MASK_TOKENS)
        )
        self.iou_prediction_head = MLP(dim, 256, NUM_MASK_TOKENS, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)

    def project_high_res(self, fpn_288: Tensor, fpn_144: Tensor) -> tuple[Tensor, Tensor]:
        """Tracker pyramid levels (B,256,288,288), (B,256,144,144) -> (B,32,..), (B,64,..)."""
        return self.conv_s0(fpn_288), self.conv_s1(fpn_144)

    def predict_all(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                    feat_s0: Tensor, feat_s1: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All four mask tokens: masks (B,4,288,288), IoU (B,4), tokens (B,4,256), object score (B,1)."""
        batch = sparse.shape[0]
        output_tokens = torch.cat(
            [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0
        )
        tokens = torch.cat([output_tokens[None].expand(batch, -1, -1), sparse], dim=1)
        src = image_embeddings + dense
        b, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe.expand(batch, -1, -1, -1), tokens)
        obj_score_out, iou_out = hs[:, 0], hs[:, 1]
        mask_tokens_out = hs[:, 2:2 + NUM_MASK_TOKENS]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        upscaled = act1(norm1(deconv1(src) + feat_s1))
        upscaled = act2(deconv2(upscaled) + feat_s0)  # (B, 32, 288, 288)

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.flatten(2)).reshape(b, NUM_MASK_TOKENS, h, w)
        return masks, self.iou_prediction_head(iou_out), mask_tokens_out, self.pred_obj_score_head(obj_score_out)

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                feat_s0: Tensor, feat_s1: Tensor, multimask_output: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """image (B,256,72,72), PE (1,256,72,72), sparse (B,N,256), dense (B,256,72,72),
        feat_s0 (B,32,288,288), feat_s1 (B,64,144,144) -> `select_outputs` of all four tokens."""
        return select_outputs(*self.predict_all(image_embeddings, image_pe, sparse, dense, feat_s0, feat_s1),
                              multimask_output)

    @staticmethod
    def _single_mask_with_stability_fallback(masks: Tensor, iou: Tensor) -> tuple[Tensor, Tensor]:
        best = iou[:, 1:].argmax(dim=-1)  # (B,)
        best_mask = torch.gather(
            masks[:, 1:], 1, best[:, None, None, None].expand(-1, 1, *masks.shape[-2:])
        )
        best_iou = torch.gather(iou[:, 1:], 1, best[:, None])
        single = masks[:, 0:1].flatten(-2)
        # Stability: IoU of the masks thresholded at +delta and -delta.
        area_inner = (single > STABILITY_DELTA).sum(-1).float()
        area_outer = (single > -STABILITY_DELTA).sum(-1).float()
        stability = torch.where(area_outer > 0, area_inner / area_outer.clamp(min=1.0), torch.ones_like(area_outer))
        stable = stability >= STABILITY_THRESH  # (B, 1)
        out_masks = torch.where(stable[..., None, None], masks[:, 0:1], best_mask)
        out_iou = torch.where(stable, iou[:, 0:1], best_iou)
        return out_masks, out_iou


def select_outputs(masks: Tensor, iou: Tensor, tokens: Tensor, object_score: Tensor,
                   multimask_output: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All four mask tokens' outputs (`predict_all`) -> masks (B,M,288,288), IoU (B,M), SAM tokens
    (B,M,256), object score logits (B,1); M = 3 with `multimask_output`, else 1. The decoder's own
    output choice, shared with the decoder of a bundle (`toolkit.pipeline.artifacts`).

    Multimask output keeps tokens 1..3 (their tokens become object-pointer candidates).
    Single-mask output keeps token 0 unless its mask is unstable, in which case the mask and
    IoU of the best multimask token replace it; the SAM token stays token 0.
    """
    if multimask_output:
        return masks[:, 1:], iou[:, 1:], tokens[:, 1:], object_score
    masks, iou = SamMaskDecoder._single_mask_with_stability_fallback(masks, iou)
    return masks, iou, tokens[:, 0:1], object_score
