"""EfficientSAM3 vision backbone: RepViT trunk + projection head + the two feature pyramids.

Checkpoint prefix: `detector.backbone.vision_backbone.` (the same module serves the detector
and the tracker). Key layout under it:
  trunk.model.backbone.model.features.*   RepViT-M0.9
  trunk.model.head.*                      projection head
  convs.{0..3}.*                          detector pyramid
  sam2_convs.{0..3}.*                     tracker pyramid
"""

import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.model.neck import SimpleFeaturePyramid
from toolkit.model.position import PositionEmbeddingSine
from toolkit.model.repvit import RepViT

# 1008x1008 input; the head output grid matches the teacher ViT's 72x72 patch grid (stride 14).
IMAGE_SIZE = 1008
EMBED_SIZE = 72
EMBED_DIM = 1024
NECK_DIM = 256

# {"vision_features": (B,256,72,72), "vision_pos_enc": [3 maps], "backbone_fpn": [3 maps]}
Features = dict[str, Tensor | list[Tensor]]


class ModelHolder(nn.Module):
    """Calls `model`; exists because the checkpoint nests wrapped modules under `.model.`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class ImageStudentEncoder(nn.Module):
    """Student trunk: RepViT features, a projection head to the teacher's width, then a
    bilinear resize of the stride-32 map to the teacher's 72x72 grid.

    (B, 3, 1008, 1008) -> (B, 1024, 72, 72)
    """

    def __init__(self, embed_dim: int = EMBED_DIM, embed_size: int = EMBED_SIZE):
        super().__init__()
        repvit = RepViT()
        self.backbone = ModelHolder(repvit)
        # 1x1 conv (no bias: BN follows), BN, GELU, 3x3 conv; indices are the checkpoint's.
        self.head = nn.Sequential(
            nn.Conv2d(repvit.out_channels, embed_dim, 1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.GELU(),
            nn.Conv2d(embed_dim, embed_dim, 3, padding=1),
        )
        self.embed_size = embed_size

    def forward(self, image: Tensor) -> Tensor:
        x = self.head(self.backbone(image))  # (B, 1024, 32, 32) for a 1008 input
        # The reference resizes only when the size differs; a same-size bilinear resize
        # is the identity, so resizing unconditionally keeps the graph static.
        size = (self.embed_size, self.embed_size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class VisionBackbone(nn.Module):
    """Trunk plus detector (`convs`) and tracker (`sam2_convs`) pyramids.

    Each pyramid gives three levels, (B,256,288,288), (B,256,144,144), (B,256,72,72), each
    with its sine position encoding; `vision_features` is the last (72x72) level. The tracker
    applies its own `conv_s0` / `conv_s1` to the first two tracker levels afterwards.
    """

    def __init__(self):
        super().__init__()
        self.trunk = ModelHolder(ImageStudentEncoder())
        self.position_encoding = PositionEmbeddingSine(NECK_DIM)
        self.convs = SimpleFeaturePyramid(EMBED_DIM, NECK_DIM)
        self.sam2_convs = SimpleFeaturePyramid(EMBED_DIM, NECK_DIM)

    @staticmethod
    def _features(fpn: list[Tensor], pos: list[Tensor]) -> Features:
        return {"vision_features": fpn[-1], "vision_pos_enc": list(pos), "backbone_fpn": fpn}

    def _positions(self, fpn: list[Tensor]) -> list[Tensor]:
        return [self.position_encoding(level) for level in fpn]

    def detector_features(self, trunk_out: Tensor) -> Features:
        """Trunk output (B,1024,72,72) -> detector features."""
        fpn = self.convs(trunk_out)
        return self._features(fpn, self._positions(fpn))

    def tracker_features(self, trunk_out: Tensor) -> Features:
        """Trunk output (B,1024,72,72) -> tracker features (before conv_s0 / conv_s1)."""
        fpn = self.sam2_convs(trunk_out)
        return self._features(fpn, self._positions(fpn))

    def forward(self, image: Tensor) -> Features:
        """Image path: normalised image (B,3,1008,1008) -> detector features."""
        return self.detector_features(self.trunk(image))

    def forward_dual(self, image: Tensor) -> tuple[Features, Features]:
        """Video path: one trunk pass -> (detector features, tracker features).

        Both pyramids have the same level shapes, so the position encodings are shared.
        """
        trunk_out = self.trunk(image)
        det_fpn = self.convs(trunk_out)
        trk_fpn = self.sam2_convs(trunk_out)
        pos = self._positions(det_fpn)
        return self._features(det_fpn, pos), self._features(trk_fpn, pos)
