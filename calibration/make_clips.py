"""Writes the two tracker clips of the shipped calibration set (run from the repository root:
`python calibration/make_clips.py`). Each clip is one photo shifted right 4*t px and down 2*t px,
edge pixels repeated, for t = 0..4 - the construction of the golden fixture's 3-frame clip - saved
as JPEG (quality 92) to keep the folder small. Deterministic: rerunning rewrites the same pixels
(Pillow's JPEG encoder is deterministic for the same input and settings)."""
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
CLIPS = {"calibration": HERE / "images" / "calibration" / "rocket.jpg",
         "evaluation": HERE / "images" / "evaluation" / "chelsea.png"}
FRAMES = 5


def shifted(rgb: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Content moves right by dx and down by dy; the uncovered border repeats the edge pixels."""
    padded = np.pad(rgb, ((dy, 0), (dx, 0), (0, 0)), mode="edge")
    return padded[:rgb.shape[0], :rgb.shape[1]]


def main() -> None:
    for part, source in CLIPS.items():
        out = HERE / "frames" / part
        out.mkdir(parents=True, exist_ok=True)
        rgb = np.asarray(Image.open(source).convert("RGB"))
        for t in range(FRAMES):
            Image.fromarray(shifted(rgb, 4 * t, 2 * t)).save(out / f"{t}.jpg", quality=92)


if __name__ == "__main__":
    main()
