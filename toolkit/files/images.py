"""Reading image files: the one loader behind `segment`, tracking frames and the benchmarks.

Every image goes through Pillow, with Pillow's own guards and conventions:
- decompression bombs: an image of more than `Image.MAX_IMAGE_PIXELS` pixels (89.5 MP) is refused
  (Pillow only warns between 1x and 2x that limit; the masks of such an image would not fit in memory
  anyway);
- EXIF orientation is applied (`ImageOps.exif_transpose`), so masks line up with the photo as every
  viewer shows it, and the result says so;
- 16-bit grey images are scaled to 8 bits (Pillow's own RGB conversion clips them to white), float
  images in [0, 1] are scaled by 255, other float or 32-bit integer images are refused;
- a file of several frames (animated GIF / PNG / WebP, multi-page TIFF) is refused instead of
  silently using its first frame. MPO (a JPEG with extra pictures, as some cameras write) is one
  photo: its primary image is used.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from os import PathLike

import numpy as np
from PIL import Image, ImageOps

from ..errors import ToolkitError

ORIENTATION_TAG = 0x0112
# EXIF orientation value -> what showing the photo upright takes (values 5..8 swap width and height).
ORIENTATIONS = {2: "mirrored", 3: "rotated 180°", 4: "flipped", 5: "mirrored and rotated 90° counter-clockwise",
                6: "rotated 90° clockwise", 7: "mirrored and rotated 90° clockwise", 8: "rotated 90° counter-clockwise"}
_SINGLE_PICTURE_FORMATS = {"MPO"}  # several frames, one photo


@dataclass
class ImageRead:
    rgb: np.ndarray           # (H, W, 3) uint8, upright
    notes: list[str]          # what was done to get there (EXIF orientation, bit-depth conversion)
    orientation: int | None   # the EXIF orientation applied (2..8), None when the file has none


def _open(path: str | PathLike) -> Image.Image:
    """Image.open with the decompression-bomb warning made an error; any failure a ToolkitError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))  # Pillow names the count, not the size
        count = f"{int(found[1]):,} pixels" if found else "too many pixels"
        raise ToolkitError(f"refusing image {path}: {count}, more than the {Image.MAX_IMAGE_PIXELS:,} of Pillow's "
                           "decompression-bomb limit (Image.MAX_IMAGE_PIXELS); downscale it") from err
    except OSError as err:  # missing file, a folder, or not an image Pillow can read
        raise ToolkitError(f"cannot read image {path}: {err.strerror or err}") from err


def _check_single_frame(img: Image.Image, path) -> None:
    frames = getattr(img, "n_frames", 1)
    if frames > 1 and img.format not in _SINGLE_PICTURE_FORMATS:
        raise ToolkitError(f"image {path} holds {frames} frames ({img.format}, animated or multi-page); "
                           "save the one frame to use as its own image (for tracking: a folder of frames)")


def _orientation(img: Image.Image) -> int | None:
    value = img.getexif().get(ORIENTATION_TAG)
    return value if value in ORIENTATIONS else None


def image_size_hw(path: str | PathLike) -> tuple[int, int]:
    """(height, width) of the upright image `read_image` gives, read from the header only."""
    img = _open(path)
    try:
        with img:
            _check_single_frame(img, path)
            width, height = img.size
            return (width, height) if _orientation(img) in (5, 6, 7, 8) else (height, width)
    except ToolkitError:
        raise
    except Exception as err:  # noqa: BLE001 - decoders raise many types on damaged files; one line for all
        raise ToolkitError(f"cannot read image {path}: {type(err).__name__}: {err}") from err


def _to_rgb(img: Image.Image, path, notes: list[str]) -> np.ndarray:
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):  # 16-bit grey
        values = np.asarray(img).astype(np.uint32)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        notes.append("16-bit grey scaled to 8 bits")
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float32)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ToolkitError(f"image {path} has float pixels outside [0, 1] (min {np.nanmin(values):g}, "
                               f"max {np.nanmax(values):g}); save it with 8 or 16 bits per channel")
        notes.append("float pixels in [0, 1] scaled to 8 bits")
        return np.repeat(np.round(values * 255).astype(np.uint8)[..., None], 3, axis=2)
    if img.mode == "I":
        raise ToolkitError(f"image {path} has 32-bit integer pixels; save it with 8 or 16 bits per channel")
    return np.array(img.convert("RGB"))


def read_image(path: str | PathLike) -> ImageRead:
    """The image as upright (H, W, 3) uint8 RGB, with notes on what was converted."""
    img = _open(path)
    try:
        with img:
            _check_single_frame(img, path)
            orientation = _orientation(img)
            notes = []
            if orientation is not None:
                img = ImageOps.exif_transpose(img)
                notes.append(f"EXIF orientation {orientation} applied ({ORIENTATIONS[orientation]})")
            return ImageRead(_to_rgb(img, path, notes), notes, orientation)
    except ToolkitError:
        raise
    except Exception as err:  # noqa: BLE001 - decoders raise many types on damaged files; one line for all
        raise ToolkitError(f"cannot read image {path}: {type(err).__name__}: {err}") from err


def load_rgb(path: str | PathLike) -> np.ndarray:
    """Read an image file as an upright (H, W, 3) uint8 RGB array."""
    return read_image(path).rgb
