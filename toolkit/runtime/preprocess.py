"""Image pre-processing of the two paths, numpy + Pillow only.

- detector path: the uint8 RGB image resized to 1008x1008 with torch's antialiased bilinear
  resize on uint8 (= torchvision v2 `Resize`), reproduced here in integer arithmetic, then
  x * (1/255), (x - 0.5) / 0.5;
- tracker frames: PIL `Image.resize((1008, 1008))` (bicubic), x / 255 in float64, float32, normalised.

torch's uint8 kernel (UpSampleKernel.cpp, ported from Pillow's ImagingResample) computes float64
filter weights per output pixel (triangle filter, widened by the scale when downscaling, normalised
to sum 1), turns them into int16 with the largest precision that keeps the biggest weight below
2^15, and resamples horizontally then vertically with a uint8 intermediate:
out = clamp((2^(p-1) + sum(in * w)) >> p, 0, 255). Doing the same here gives the same bytes
(tests/test_runtime.py checks it against torch on random and golden images).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

IMAGE_SIZE = 1008


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        from .errors import RuntimeInputError
        raise RuntimeInputError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")


def _aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """int16-valued taps of torch's antialiased bilinear resize along one axis:
    (out, K) source indices, (out, K) integer weights (0 beyond each pixel's support), precision."""
    scale = in_size / out_size  # area_pixel_compute_scale<double>, align_corners=False, no scale given
    support = max(scale, 1.0)  # bilinear: interp_size / 2 = 1, widened when downscaling
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    max_taps = int(np.ceil(support)) * 2 + 1
    index = np.zeros((out_size, max_taps), np.int64)
    weight = np.zeros((out_size, max_taps), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), max_taps)
        j = np.arange(xsize)
        w = np.maximum(0.0, 1.0 - np.abs((j + xmin - center + 0.5) * invscale))
        total = w.sum()
        if total != 0.0:
            w = w / total
        index[i, :xsize] = xmin + j
        index[i, xsize:] = xmin  # weight 0: any valid index
        weight[i, :xsize] = w
    w_max = weight.max()
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weight * (1 << precision)
    ints = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int64)
    return index, ints, precision


def _resample_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One separable pass of the uint8 antialiased bilinear resize along `axis` (uint8 in and out)."""
    index, weights, precision = _aa_weights(x.shape[axis], out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    acc = np.full([out_size if a == axis else n for a, n in enumerate(x.shape)], 1 << (precision - 1), np.int64)
    for k in range(index.shape[1]):  # one tap at a time: a few full-size int64 temporaries, not K of them
        w = weights[:, k]
        if not w.any():
            continue
        acc += np.take(x, index[:, k], axis=axis).astype(np.int64) * w.reshape(shape)
    acc >>= precision
    return np.clip(acc, 0, 255).astype(np.uint8)


def resize_uint8_antialiased(rgb: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 -> (out_h, out_w, C) uint8, as torch `interpolate(mode="bilinear",
    antialias=True, align_corners=False)` on a uint8 tensor: horizontal pass first, then vertical."""
    out = rgb
    if out.shape[1] != out_hw[1]:
        out = _resample_axis(out, 1, out_hw[1])
    if out.shape[0] != out_hw[0]:
        out = _resample_axis(out, 0, out_hw[0])
    return np.ascontiguousarray(out)


def _normalise_chw(hwc: np.ndarray) -> np.ndarray:
    return ((hwc.transpose(2, 0, 1) - np.float32(0.5)) / np.float32(0.5))[None].astype(np.float32, copy=False)


def preprocess_image(rgb: np.ndarray) -> np.ndarray:
    """Detector path: (H, W, 3) uint8 -> (1, 3, 1008, 1008) float32 (x * (1/255), then (x - 0.5) / 0.5)."""
    _check_rgb(rgb)
    resized = resize_uint8_antialiased(rgb, (IMAGE_SIZE, IMAGE_SIZE))
    return _normalise_chw(resized.astype(np.float32) * np.float32(1.0 / 255))


def preprocess_frame(rgb: np.ndarray) -> np.ndarray:
    """Tracker path: (H, W, 3) uint8 -> (1, 3, 1008, 1008) float32: PIL's default (bicubic) resize,
    /255 in float64, float32, normalised."""
    _check_rgb(rgb)
    resized = np.asarray(Image.fromarray(rgb).resize((IMAGE_SIZE, IMAGE_SIZE)))
    return _normalise_chw((resized / 255.0).astype(np.float32))
