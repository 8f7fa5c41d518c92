"""ViTDet-style simple feature pyramid: one trunk map -> maps at 4x, 2x, 1x (and 0.5x) its size."""

from collections import OrderedDict

from torch import Tensor, nn


def _pyramid_level(scale: float, in_dim: int, out_dim: int) -> nn.Sequential:
    """Resampling stage for one scale, then a 1x1 projection to `out_dim` and a 3x3 conv.

    Submodule names are the checkpoint's (`dconv_2x2_0`, `conv_1x1`, ...).
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if scale == 4.0:
        layers["dconv_2x2_0"] = nn.ConvTranspose2d(in_dim, in_dim // 2, 2, stride=2)
        layers["gelu"] = nn.GELU()
        layers["dconv_2x2_1"] = nn.ConvTranspose2d(in_dim // 2, in_dim // 4, 2, stride=2)
        width = in_dim // 4
    elif scale == 2.0:
        layers["dconv_2x2"] = nn.ConvTranspose2d(in_dim, in_dim // 2, 2, stride=2)
        width = in_dim // 2
    elif scale == 1.0:
        width = in_dim
    elif scale == 0.5:
        layers["maxpool_2x2"] = nn.MaxPool2d(2, stride=2)
        width = in_dim
    else:
        raise ValueError(f"unsupported pyramid scale {scale}")
    layers["conv_1x1"] = nn.Conv2d(width, out_dim, 1)
    layers["conv_3x3"] = nn.Conv2d(out_dim, out_dim, 3, padding=1)
    return nn.Sequential(layers)


class SimpleFeaturePyramid(nn.ModuleList):
    """Levels for scales 4, 2, 1, 0.5 (checkpoint keys `<i>.*`); only the first three run.

    EfficientSAM3 drops the coarsest (0.5x) level ("scalp" = 1). Its weights are in the
    checkpoint, so the module is kept for loading, but it is never run: its output would
    be discarded.
    """

    scales = (4.0, 2.0, 1.0, 0.5)
    kept_levels = 3

    def __init__(self, in_dim: int = 1024, out_dim: int = 256):
        super().__init__(_pyramid_level(s, in_dim, out_dim) for s in self.scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, in_dim, h, w) -> [(B, out_dim, 4h, 4w), (B, out_dim, 2h, 2w), (B, out_dim, h, w)]."""
        return [self[i](x) for i in range(self.kept_levels)]
