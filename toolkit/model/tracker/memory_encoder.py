"""Memory encoder of the tracker (checkpoint prefix `tracker.maskmem_backbone.`).

It fuses the frame's 72x72 pixel features with its predicted mask into a 64-channel memory
map that later frames attend to. The mask logits are first mapped to a fixed +-10 logit range
(`memory_mask_probability`, `memory_input`), then downsampled 16x by strided convs to the feature grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.model.common import LayerNorm2d
from toolkit.model.position import PositionEmbeddingSine

IN_DIM = 256
MEM_DIM = 64
# The 1008x1008 mask is resized to 1152 = 72 * 16 so four stride-2 convs land on the 72x72 grid.
MASK_RESIZE = 1152
# Mask probabilities p in [0, 1] enter the memory encoder as 20 * p - 10.
MASK_SCALE = 20.0
MASK_BIAS = -10.0


def memory_mask_probability(mask_logits: Tensor, mask_from_points: bool) -> Tensor:
    """High-res mask logits (B,1,1008,1008) -> the mask probability the memory is encoded from.

    On frames whose mask comes from user points (the prompted frames, encoded at the start of
    propagation) the mask is binarised at logit 0; on tracked frames the sigmoid probability is
    used. This is a pipeline step, not part of the memory_encoder graph: a threshold inside the
    graph would turn float rounding near 0 (which differs between CPUs and runtimes) into flipped
    pixels, so the graph and its reference are checked on the same, already binarised input.
    """
    return (mask_logits > 0).float() if mask_from_points else torch.sigmoid(mask_logits)


def memory_input(mask_probability: Tensor) -> Tensor:
    """Mask probabilities p in [0, 1] -> the memory encoder's mask input 20 * p - 10, in [-10, 10]."""
    return mask_probability * MASK_SCALE + MASK_BIAS


class MaskDownSampler(nn.Module):
    """(B,1,1008,1008) -> (B,256,72,72): resize to 1152, then 4 x [3x3 stride-2 conv,
    LayerNorm2d, GELU] growing 1->4->16->64->256 channels, then a 1x1 conv."""

    def __init__(self, embed_dim: int = IN_DIM):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(4):
            layers += [nn.Conv2d(channels, channels * 4, kernel_size=3, stride=2, padding=1),
                       LayerNorm2d(channels * 4), nn.GELU()]
            channels *= 4
        layers.append(nn.Conv2d(channels, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)  # indices match the checkpoint (encoder.0 ... encoder.12)

    def forward(self, mask: Tensor) -> Tensor:
        # Upstream resizes with antialias=True; for an upscale that equals plain bilinear
        # (measured difference ~5e-7), and plain bilinear exports everywhere.
        mask = F.interpolate(mask, size=(MASK_RESIZE, MASK_RESIZE), mode="bilinear", align_corners=False)
        return self.encoder(mask)


class CXBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise conv, channel LayerNorm, 4x MLP (GELU), layer scale, residual."""

    def __init__(self, dim: int = IN_DIM):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """Two ConvNeXt blocks (keys `layers.N.*`)."""

    def __init__(self, dim: int = IN_DIM, num_layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """pixel features (B,256,72,72) + mask input (B,1,1008,1008) from `memory_input`
    -> memory features (B,64,72,72), position encoding (B,64,72,72).
    """

    def __init__(self):
        super().__init__()
        self.mask_downsampler = MaskDownSampler(IN_DIM)
        self.pix_feat_proj = nn.Conv2d(IN_DIM, IN_DIM, kernel_size=1)
        self.fuser = Fuser(IN_DIM)
        self.out_proj = nn.Conv2d(IN_DIM, MEM_DIM, kernel_size=1)
        self.position_encoding = PositionEmbeddingSine(MEM_DIM)

    def forward(self, pix_feat: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(mask)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x)

    def receptive_cells(self, mask_pixels: Tensor) -> Tensor:
        """(B,1,1008,1008) bool -> (B,72,72) bool: the memory cells whose value depends on any of
        these mask pixels, walked through the same layers as `forward` (the bilinear resize, then
        each spatial convolution as a max-pool of its kernel, stride and padding; per-position
        norms, activations and 1x1 convolutions spread nothing). Used to tell which memory values a
        flipped mask pixel can have changed."""
        x = F.interpolate(mask_pixels.float(), size=(MASK_RESIZE, MASK_RESIZE), mode="bilinear",
                          align_corners=False)
        x = (x > 0).float()
        convs = [m for m in self.mask_downsampler.encoder if isinstance(m, nn.Conv2d)]
        convs += [block.dwconv for block in self.fuser.layers]
        for conv in convs:
            x = F.max_pool2d(x, conv.kernel_size, conv.stride, conv.padding)
        return x[:, 0] > 0
