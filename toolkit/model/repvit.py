"""RepViT-M0.9 feature trunk (the image side of EfficientSAM3's student encoder).

Inference form with every BatchNorm kept as its own layer, so the checkpoint's
`features.*` keys load unchanged. Fusing the BatchNorms and the re-parameterisable
branches into single convolutions is an export step done on top of this structure.
"""

import torch
from torch import Tensor, nn


class ConvBN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm (checkpoint keys `c.*`, `bn.*`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)


class RepVGGDW(nn.Module):
    """Depthwise 3x3 conv-BN + depthwise 1x1 conv + identity, then BatchNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = ConvBN(channels, channels, 3, groups=channels)
        self.conv1 = nn.Conv2d(channels, channels, 1, groups=channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x) + self.conv1(x) + x)


class SqueezeExcite(nn.Module):
    """Channel gating: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid -> scale."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class Residual(nn.Module):
    """x + m(x) (checkpoint keys `m.*`)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: Tensor) -> Tensor:
        return x + self.m(x)


def _se_hidden(channels: int) -> int:
    """Squeeze width: a quarter of the channels rounded to a multiple of 8 (at least 8)."""
    return max(8, int(channels / 4 + 4) // 8 * 8)


class RepViTBlock(nn.Module):
    """Token mixer (spatial) followed by a residual 2x-expansion channel MLP.

    Stride 1: RepVGGDW [+ SE]. Stride 2: depthwise stride-2 conv-BN [+ SE] and a 1x1
    conv-BN changing the width. Index 1 of `token_mixer` is the SE slot (Identity without
    SE) so the checkpoint's `token_mixer.2.*` indices line up.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, use_se: bool):
        super().__init__()
        se = SqueezeExcite(in_ch, _se_hidden(in_ch)) if use_se else nn.Identity()
        if stride == 2:
            self.token_mixer = nn.Sequential(
                ConvBN(in_ch, in_ch, 3, stride=2, groups=in_ch), se, ConvBN(in_ch, out_ch)
            )
        else:
            self.token_mixer = nn.Sequential(RepVGGDW(in_ch), se)
        self.channel_mixer = Residual(
            nn.Sequential(ConvBN(out_ch, 2 * out_ch), nn.GELU(), ConvBN(2 * out_ch, out_ch))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.channel_mixer(self.token_mixer(x))


# RepViT-M0.9 blocks as (output channels, stride, squeeze-excite).
M0_9_BLOCKS: tuple[tuple[int, int, bool], ...] = (
    (48, 1, True), (48, 1, False), (48, 1, False),
    (96, 2, False), (96, 1, True), (96, 1, False), (96, 1, False),
    (192, 2, False),
    *((192, 1, True), (192, 1, False)) * 7,
    (192, 1, False),
    (384, 2, False), (384, 1, True), (384, 1, False),
)  # fmt: skip


class RepViT(nn.Module):
    """RepViT-M0.9 features: (B, 3, H, W) -> (B, 384, H/32, W/32) (ceil at each stride 2).

    `features.0` is the stride-4 stem (conv-BN, GELU, conv-BN); `features.1..26` are the
    blocks of `M0_9_BLOCKS`. There is no classifier: EfficientSAM3 uses the last feature map.
    """

    def __init__(self, blocks: tuple[tuple[int, int, bool], ...] = M0_9_BLOCKS):
        super().__init__()
        width = blocks[0][0]
        stem = nn.Sequential(
            ConvBN(3, width // 2, 3, stride=2), nn.GELU(), ConvBN(width // 2, width, 3, stride=2)
        )
        layers: list[nn.Module] = [stem]
        for out_ch, stride, use_se in blocks:
            layers.append(RepViTBlock(width, out_ch, stride, use_se))
            width = out_ch
        self.features = nn.Sequential(*layers)
        self.out_channels = width

    def forward(self, image: Tensor) -> Tensor:
        return self.features(image)
