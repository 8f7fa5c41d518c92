"""`toolkit-run` (`python -m toolkit.runtime`): segment an image or track frames from a bundle with
the runtime alone. Writes mask PNGs and detections.json / tracks.json; every error is one line
on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RuntimeInputError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _numbers(text: str, count: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
    return values


def load_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, upright (EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise RuntimeInputError(f"cannot read image {path}: {e}") from e


class Folder:
    """The image files of a folder in natural name order (one size)."""

    def __init__(self, path: Path):
        if not path.is_dir():
            raise RuntimeInputError(f"--frames {path} is not a folder of images")
        key = lambda p: [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]
        self.files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=key)
        if not self.files:
            raise RuntimeInputError(f"no image files in {path}")
        self.size_hw = load_rgb(self.files[0]).shape[:2]

    def __len__(self) -> int:
        return len(self.files)

    def rgb(self, index: int) -> np.ndarray:
        rgb = load_rgb(self.files[index])
        if rgb.shape[:2] != self.size_hw:
            raise RuntimeInputError(f"frame {self.files[index].name} differs in size from {self.files[0].name}")
        return rgb


@dataclass(frozen=True)
class Clicks:
    points_xy: tuple = ()
    labels: tuple = ()
    box_xyxy: tuple | None = None


def _fresh(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise RuntimeInputError(f"--out {out} is not empty (use --force)")
    out.mkdir(parents=True, exist_ok=True)


def run(args) -> None:
    from PIL import Image

    from .bundle import open_bundle
    from .image import Segmenter
    from .video import Tracker
    bundle = open_bundle(args.bundle)
    out = Path(args.out)
    if (args.image is None) == (args.frames is None):
        raise RuntimeInputError("give --image (segmentation) or --frames (tracking)")
    if args.image is not None:
        if args.prompt is None:
            raise RuntimeInputError("--image needs --prompt")
        rgb = load_rgb(Path(args.image))
        found = Segmenter(bundle, args.threads)(rgb, args.prompt, args.box, None, args.threshold, args.max_objects)
        _fresh(out, args.force)
        objects = []
        for i in range(len(found.scores)):
            Image.fromarray(found.masks[i].astype(np.uint8) * 255).save(out / f"mask_{i:03d}.png")
            objects.append({"index": i, "query": int(found.query_indices[i]), "score": float(found.scores[i]),
                            "box_xyxy_px": [round(float(v), 3) for v in found.boxes_xyxy_px[i]],
                            "mask": f"mask_{i:03d}.png", "mask_area_px": int(found.masks[i].sum())})
        (out / "detections.json").write_text(json.dumps({"prompt": args.prompt, "objects": objects}, indent=2))
        print(f"{len(objects)} object(s) -> {out}")
        return
    frames = Folder(Path(args.frames))
    if not args.point and not args.box:
        raise RuntimeInputError("tracking needs --point or --box")
    prompt = Clicks(tuple(args.point), (1,) * len(args.point), args.box[0] if args.box else None)
    session = Tracker(bundle, args.threads).prompt(frames, args.frame, prompt)
    _fresh(out, args.force)
    tracks = []
    for result in session.propagate():
        name = f"masks/obj_01/{result.index:05d}.png"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(result.masks[0].astype(np.uint8) * 255).save(out / name)
        tracks.append({"index": result.index, "score_logit": float(result.object_score_logits[0]), "mask": name})
    (out / "tracks.json").write_text(json.dumps(sorted(tracks, key=lambda t: t["index"]), indent=2))
    print(f"{len(tracks)} frame(s) -> {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="toolkit-run", description=__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--image")
    parser.add_argument("--prompt")
    parser.add_argument("--frames")
    parser.add_argument("--point", action="append", default=[], type=lambda s: _numbers(s, 2), help="x,y")
    parser.add_argument("--box", action="append", default=[], type=lambda s: _numbers(s, 4), help="x0,y0,x1,y1")
    parser.add_argument("--frame", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--max-objects", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", required=True)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        run(args)
    except RuntimeInputError as e:
        print(f"toolkit-run: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0
