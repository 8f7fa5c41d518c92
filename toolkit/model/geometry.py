"""SAM3 geometry encoder: point and box prompts -> prompt tokens for the fusion encoder.

Checkpoint prefix `detector.geometry_encoder.`. Each point is the sum of a linear map of its
coordinates, the image feature bilinearly sampled under it and a linear map of its sine
encoding; each box likewise with a 7x7 RoIAlign of the image features reduced by a 7x7 conv.
A label embedding (negative / positive) is added to every token, a learned CLS token is
appended, and three pre-norm layers let the tokens attend to each other and to the image.
The token sequence is [points, boxes, CLS]: with no points and no boxes (text-only prompts)
it is the CLS token alone.

Prompts are unpadded (every batch element has the same number of points and of boxes), so
the returned padding mask is all False.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.model.box_ops import box_cxcywh_to_xyxy
from toolkit.model.fusion_encoder import FusionEncoderLayer
from toolkit.model.position import PositionEmbeddingSine
from toolkit.model.roi_align import roi_align


class GeometryEncoder(nn.Module):
    def __init__(self, d_model: int = 256, num_layers: int = 3, num_heads: int = 8,
                 ffn_dim: int = 2048, roi_size: int = 7):
        super().__init__()
        self.d_model = d_model
        self.roi_size = roi_size
        self.pos_enc = PositionEmbeddingSine(d_model)
        self.label_embed = nn.Embedding(2, d_model)  # 0 = negative, 1 = positive
        self.cls_embed = nn.Embedding(1, d_model)

        self.points_direct_project = nn.Linear(2, d_model)
        self.points_pool_project = nn.Linear(d_model, d_model)
        self.points_pos_enc_project = nn.Linear(d_model, d_model)

        self.boxes_direct_project = nn.Linear(4, d_model)
        self.boxes_pool_project = nn.Conv2d(d_model, d_model, roi_size)
        # sine encoding of the centre (d_model) plus raw h and w
        self.boxes_pos_enc_project = nn.Linear(d_model + 2, d_model)

        self.final_proj = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.img_pre_norm = nn.LayerNorm(d_model)  # applied to the features that get pooled

        self.encode = nn.ModuleList(
            FusionEncoderLayer(d_model, num_heads, ffn_dim) for _ in range(num_layers)
        )
        self.encode_norm = nn.LayerNorm(d_model)

    def _encode_points(self, points: Tensor, labels: Tensor, pooled_feats: Tensor) -> Tensor:
        """points (M, B, 2) normalised [x, y] -> (M, B, C)."""
        num_points, batch = points.shape[:2]
        direct = self.points_direct_project(points)

        # grid_sample wants (B, M, 1, 2) in [-1, 1]; pixel centres convention (align_corners=False)
        grid = points.transpose(0, 1).unsqueeze(2) * 2 - 1
        sampled = F.grid_sample(pooled_feats, grid, align_corners=False)  # (B, C, M, 1)
        pooled = self.points_pool_project(sampled.squeeze(-1).permute(2, 0, 1))

        x, y = points.unbind(-1)
        enc_x, enc_y = self.pos_enc.encode_xy(x.flatten(), y.flatten())
        enc = torch.cat((enc_x, enc_y), dim=-1).view(num_points, batch, self.d_model)
        pos = self.points_pos_enc_project(enc)

        return self.label_embed(labels.long()) + (direct + pooled + pos)

    def _encode_boxes(self, boxes: Tensor, labels: Tensor, pooled_feats: Tensor) -> Tensor:
        """boxes (N, B, 4) normalised [cx, cy, w, h] -> (N, B, C)."""
        num_boxes, batch = boxes.shape[:2]
        direct = self.boxes_direct_project(boxes)

        height, width = pooled_feats.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        boxes_px = (box_cxcywh_to_xyxy(boxes) * scale).transpose(0, 1)  # (B, N, 4) feature cells
        rois = roi_align(pooled_feats, boxes_px, self.roi_size)  # (B, N, C, 7, 7)
        pooled = self.boxes_pool_project(rois.flatten(0, 1))  # (B*N, C, 1, 1)
        pooled = pooled.view(batch, num_boxes, self.d_model).transpose(0, 1)

        cx, cy, w, h = boxes.unbind(-1)
        enc = self.pos_enc.encode_boxes(cx.flatten(), cy.flatten(), w.flatten(), h.flatten())
        pos = self.boxes_pos_enc_project(enc.view(num_boxes, batch, self.d_model + 2))

        return self.label_embed(labels.long()) + (direct + pooled + pos)

    def forward(self, boxes: Tensor, box_labels: Tensor, image_features: Tensor,
                image_pos: Tensor, points: Tensor | None = None,
                point_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """
        boxes: (N, B, 4) normalised [cx, cy, w, h]; box_labels: (N, B) bool/int, 1 = positive.
        image_features, image_pos: (B, C, H, W) last pyramid level and its position encoding.
        points: (M, B, 2) normalised [x, y]; point_labels: (M, B); omitted = no points.
        N and M may be 0.

        Returns tokens (M + N + 1, B, C) and their padding mask (B, M + N + 1), all False.
        """
        batch = image_features.shape[0]
        if points is None:
            points = boxes.new_zeros(0, batch, 2)
            point_labels = box_labels.new_zeros(0, batch)

        # Pooling reads layer-normed features; the attention layers read the raw ones.
        pooled_feats = self.img_pre_norm(image_features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        memory = image_features.flatten(2).permute(2, 0, 1)  # (H*W, B, C)
        memory_pos = image_pos.flatten(2).permute(2, 0, 1)

        cls = self.cls_embed.weight.view(1, 1, self.d_model).expand(1, batch, self.d_model)
        tokens = torch.cat(
            (
                self._encode_points(points, point_labels, pooled_feats),
                self._encode_boxes(boxes, box_labels, pooled_feats),
                cls,
            ),
            dim=0,
        )
        tokens = self.norm(self.final_proj(tokens))
        for layer in self.encode:
            tokens = layer(tokens, memory, memory_pos=memory_pos)
        tokens = self.encode_norm(tokens)
        mask = torch.zeros(batch, tokens.shape[0], dtype=torch.bool, device=tokens.device)
        return tokens, mask
