"""Pictures a person looks at: masks and boxes over the image."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw


def palette(n: int) -> list[tuple[int, int, int]]:
    """n well-separated colours (golden-ratio hue steps)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((0.61803 * i) % 1.0, 0.85, 1.0)) for i in range(n)]


def overlay(rgb: np.ndarray, masks: np.ndarray, boxes_xyxy: np.ndarray, scores: np.ndarray,
            caption: str = "", alpha: float = 0.45) -> Image.Image:
    """Masks tinted at `alpha`, boxes outlined and labelled with scores; best score drawn last (on top)."""
    base = rgb.astype(np.float32)
    colours = palette(len(scores))
    order = np.argsort(scores, kind="stable")
    for i in order:
        tint = np.array(colours[i], dtype=np.float32)
        base[masks[i]] = (1 - alpha) * base[masks[i]] + alpha * tint
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for i in order:
        x0, y0, x1, y1 = (float(v) for v in boxes_xyxy[i])
        draw.rectangle([x0, y0, x1, y1], outline=colours[i], width=2)
        draw.text((x0 + 3, y0 + 2), f"{scores[i]:.2f}", fill=colours[i])
    if caption:
        draw.rectangle([0, 0, img.width, 14], fill=(0, 0, 0))
        draw.text((4, 2), caption, fill=(255, 255, 255))
    return img
