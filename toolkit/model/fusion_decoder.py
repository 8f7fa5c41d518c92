"""SAM3 fusion decoder: 200 object queries + a presence token over the encoded image.

Checkpoint prefix `detector.transformer.decoder.`. Each of the six layers runs self-attention
over [presence token, queries], cross-attention to the prompt tokens, cross-attention to the
image memory and an FFN (post-norm). Queries carry a box each: the query position is an MLP of
the box's sine embedding, the image cross-attention gets a per-head bias from the box
("boxRPB", log-scaled distances of every feature row/column to the box edges), and after
every layer the box is refined in logit space from the normalised query. The presence token
(no position, no box bias) yields one logit per layer: is the prompted concept in the image.

Evaluation configuration: no one-to-many (DAC) query copies, single feature level, no image
padding. All sequences are seq-first, (tokens, B, C).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.model.box_ops import box_cxcywh_to_xyxy, box_sine_embed, inverse_sigmoid
from toolkit.model.chunked_attention import merge_heads, split_heads
from toolkit.model.common import MLP

# 1008 input / patch stride 14: the memory is a 72x72 grid.
FEAT_SIZE = 72


class FusionDecoderLayer(nn.Module):
    """Post-norm block: self-attention, text cross-attention, image cross-attention, FFN."""

    def __init__(self, d_model: int = 256, num_heads: int = 8, ffn_dim: int = 2048):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.ca_text = nn.MultiheadAttention(d_model, num_heads)
        self.catext_norm = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tokens: Tensor, token_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                prompt: Tensor, prompt_mask: Tensor, bias_rows: Tensor, bias_cols: Tensor) -> Tensor:
        """
        tokens, token_pos: (1 + Q, B, C), presence token first (its position is zero).
        memory, memory_pos: (H*W, B, C); prompt (L, B, C), prompt_mask (B, L) True = padding.
        bias_rows, bias_cols: (B, heads, 1 + Q, S) with H = W = S: the image attention bias of
        query q at cell (h, w) is bias_rows[..., q, h] + bias_cols[..., q, w].
        """
        q = tokens + token_pos
        tokens = self.norm2(tokens + self.self_attn(q, q, tokens, need_weights=False)[0])
        attended = self.ca_text(
            tokens + token_pos, prompt, prompt, key_padding_mask=prompt_mask, need_weights=False
        )[0]
        tokens = self.catext_norm(tokens + attended)
        attended = self._image_attention(tokens + token_pos, memory + memory_pos, memory, bias_rows, bias_cols)
        tokens = self.norm1(tokens + attended)
        return self.norm3(tokens + self.linear2(F.relu(self.linear1(tokens))))

    def _image_attention(self, query: Tensor, key: Tensor, value: Tensor, bias_rows: Tensor,
                         bias_cols: Tensor) -> Tensor:
        """`cross_attn(query, key, value, attn_mask=rows + cols)` without the (1 + Q) x H*W bias as
        one tensor: the two factors are added to the scores in turn. In the first layer the boxes
        are learned constants, and an exporter or graph optimiser folds a bias built from them
        into a 32 MiB constant; added to the scores, every sum has a run-time operand."""
        q, k, v = split_heads(self.cross_attn, query, key, value)
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, heads, 1 + Q, H*W)
        side = bias_rows.shape[-1]
        scores = (scores.unflatten(-1, (side, side)) + bias_rows[..., :, None] + bias_cols[..., None, :]).flatten(-2)
        return merge_heads(self.cross_attn, scores.softmax(-1) @ v)


class FusionDecoder(nn.Module):
    """Six decoder layers with box refinement, boxRPB and the presence token."""

    def __init__(self, d_model: int = 256, num_layers: int = 6, num_queries: int = 200,
                 num_heads: int = 8, ffn_dim: int = 2048, feat_size: int = FEAT_SIZE):
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            FusionDecoderLayer(d_model, num_heads, ffn_dim) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.reference_points = nn.Embedding(num_queries, 4)  # initial boxes, logit space
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        self.boxRPB_embed_x = MLP(2, d_model, num_heads, 2)
        self.boxRPB_embed_y = MLP(2, d_model, num_heads, 2)
        self.presence_token = nn.Embedding(1, d_model)
        self.presence_token_head = MLP(d_model, d_model, 1, 3)
        self.presence_token_out_norm = nn.LayerNorm(d_model)
        # Normalised coordinate of every feature row/column (the grid is square), for boxRPB.
        self.register_buffer(
            "rpb_coords", torch.arange(feat_size, dtype=torch.float32) / feat_size,
            persistent=False,
        )

    @staticmethod
    def _log_distances(coords: Tensor, edges: Tensor) -> Tensor:
        """coords (S,), edges (B, Q, 2) -> (B, Q, S, 2) signed distances, log-compressed:
        d -> sign(8d) * log2(|8d| + 1) / 3, so +-1 maps to +-1."""
        deltas = (coords[:, None] - edges[:, :, None, :]) * 8
        return torch.sign(deltas) * torch.log2(deltas.abs() + 1.0) / math.log2(8)

    def _image_bias(self, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """boxes (Q, B, 4) cxcywh -> the image attention bias's row and column factors, each
        (B, heads, 1 + Q, S) (see FusionDecoderLayer.forward).

        Row 0, the presence token's, is zero. The bias of query q at cell (h, w) is
        MLP_y(distances of row h to the box's top/bottom) + MLP_x(column w to left/right).
        """
        xyxy = box_cxcywh_to_xyxy(boxes).transpose(0, 1)  # (B, Q, 4)
        bias_x = self.boxRPB_embed_x(self._log_distances(self.rpb_coords, xyxy[..., 0::2]))
        bias_y = self.boxRPB_embed_y(self._log_distances(self.rpb_coords, xyxy[..., 1::2]))
        # (B, Q, S, heads) -> (B, heads, 1 + Q, S) with a leading zero row for the presence token.
        return tuple(F.pad(b, (0, 0, 0, 0, 1, 0)).permute(0, 3, 1, 2) for b in (bias_y, bias_x))

    def forward(self, memory: Tensor, memory_pos: Tensor, prompt: Tensor,
                prompt_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        memory, memory_pos: (H*W, B, C) fusion encoder output and image position encoding.
        prompt: (L, B, C) prompt tokens (as fed to the encoder); prompt_mask: (B, L) True = pad.

        Returns
          hs (layers, Q, B, C): normalised queries after each layer;
          reference_boxes (layers, Q, B, 4): the cxcywh box each layer started from (the
            initial boxes, then the refinements of layers 0..4);
          presence_logits (layers, 1, B): unclamped (the reference's clamp is not in place);
          presence_feats (1, B, C): the last layer's presence token, not normalised.
        """
        batch = memory.shape[1]
        queries = self.query_embed.weight[:, None].repeat(1, batch, 1)
        presence = self.presence_token.weight[None].expand(1, batch, self.d_model)
        boxes = self.reference_points.weight[:, None].repeat(1, batch, 1).sigmoid()
        no_pos = torch.zeros_like(presence)

        hs, ref_boxes, presence_logits = [], [boxes], []
        for index, layer in enumerate(self.layers):
            query_pos = self.ref_point_head(box_sine_embed(boxes, self.d_model))
            tokens = layer(
                torch.cat((presence, queries), dim=0),
                torch.cat((no_pos, query_pos), dim=0),
                memory, memory_pos, prompt, prompt_mask, *self._image_bias(boxes),
            )
            presence, queries = tokens[:1], tokens[1:]

            normed = self.norm(queries)
            boxes = (self.bbox_embed(normed) + inverse_sigmoid(boxes)).sigmoid()
            if index < len(self.layers) - 1:
                ref_boxes.append(boxes)
            hs.append(normed)
            presence_logits.append(
                self.presence_token_head(self.presence_token_out_norm(presence)).squeeze(-1)
            )
        return torch.stack(hs), torch.stack(ref_boxes), torch.stack(presence_logits), presence
