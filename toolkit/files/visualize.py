"""Pictures a person looks at: masks and boxes over the image."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

PANEL_WIDTH, STRIP_FRAMES = 480, 8  # tracking pictures: panel width in pixels, frames in a strip


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


def track_panel(rgb, masks, score_logits, ids, caption, clicks=None):
    """One frame, downscaled to PANEL_WIDTH: masks tinted, object scores, prompt marks."""
    colours = palette(max(ids, default=0) + 1)
    base = rgb.astype(np.float32)
    for oid, mask in zip(ids, masks):
        base[mask] = 0.5 * base[mask] + 0.5 * np.array(colours[oid], np.float32)
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    scale = min(1.0, PANEL_WIDTH / img.width)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    if clicks is not None:
        for (x, y), label in zip(clicks.points_xy, clicks.labels):
            x, y = x * scale, y * scale
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(0, 220, 0) if label else (230, 0, 0),
                         outline=(255, 255, 255))
        if clicks.box_xyxy is not None:
            draw.rectangle([v * scale for v in clicks.box_xyxy], outline=(0, 220, 0), width=2)
    text = caption + "".join(f"  obj{oid}: {1 / (1 + np.exp(-s)):.2f}" for oid, s in zip(ids, score_logits))
    draw.rectangle([0, 0, img.width, 14], fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255))
    return img


def track_strip(panels, caption):
    """Up to STRIP_FRAMES evenly spaced panels in rows of four under a caption bar."""
    picks = np.unique(np.linspace(0, len(panels) - 1, min(len(panels), STRIP_FRAMES)).round().astype(int))
    chosen = [panels[i] for i in picks]
    cols = min(4, len(chosen))
    rows = -(-len(chosen) // cols)
    w, h = chosen[0].size
    strip = Image.new("RGB", (cols * w + (cols - 1) * 4, 18 + rows * h + (rows - 1) * 4), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, 3), caption, fill=(0, 0, 0))
    for i, panel in enumerate(chosen):
        strip.paste(panel, ((i % cols) * (w + 4), 18 + (i // cols) * (h + 4)))
    return strip
