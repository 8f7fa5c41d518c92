"""Image pre-processing for the two EfficientSAM3 paths.

Both give a (1, 3, 1008, 1008) float32 tensor normalised with mean = std = 0.5, but they
resize differently, as the reference does:
- image path (detector): uint8 bilinear resize with antialiasing, the result still uint8;
- tracker frames: PIL bicubic resize, then /255 in float64.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from toolkit.errors import ToolkitError
from toolkit.files.images import load_rgb  # noqa: F401 - the one image loader, re-exported here

IMAGE_SIZE = 1008


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ToolkitError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]: (x - 0.5) / 0.5."""
    return (x - 0.5) / 0.5


def preprocess_image(rgb: np.ndarray) -> torch.Tensor:
    """Image path: (H, W, 3) uint8 -> (1, 3, 1008, 1008) float32.

    The uint8 antialiased bilinear resize is bit-identical to torchvision v2 `Resize` on a
    uint8 image. The reference's float conversion multiplies by 1/255 (not divides).
    """
    _check_rgb(rgb)
    chw = torch.tensor(rgb).permute(2, 0, 1)[None]  # copy: the array may be read-only
    resized = F.interpolate(
        chw, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False
    )
    return _normalise(resized.to(torch.float32) * (1.0 / 255))


def preprocess_frame(rgb: np.ndarray) -> torch.Tensor:
    """Tracker path: (H, W, 3) uint8 -> (1, 3, 1008, 1008) float32.

    PIL's default (bicubic) resize, /255 in float64, cast to float32, then normalised.
    """
    _check_rgb(rgb)
    resized = np.asarray(Image.fromarray(rgb).resize((IMAGE_SIZE, IMAGE_SIZE)))
    scaled = torch.from_numpy(resized / 255.0).permute(2, 0, 1).to(torch.float32)
    return _normalise(scaled)[None]
