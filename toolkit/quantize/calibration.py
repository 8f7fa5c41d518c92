"""Calibration sets: real photos, prompts and a short clip, split into a calibration part (what the
quantizers see) and an evaluation part (what the accuracy gate measures on; calibration never sees it).

A calibration directory (the shipped `calibration/`, or a user's `--calibration DIR`):

    images/                      photos (.jpg .jpeg .png .bmp .webp .tif .tiff), either
      calibration/ evaluation/     already split into the two parts, or
      *.png ...                    flat: sorted by name, every 4th image (index 3, 7, ...) is evaluation,
                                   and at least one image goes to each part (2 images at least)
    prompts.txt                  optional (absent: the shipped set's prompts). One prompt per line:
                                   CONCEPT [| x0,y0,x1,y1 [; ...]]   boxes normalised to 0..1 (positive)
                                   @track point X,Y | @track box X0,Y0,X1,Y1   (0..1, on the first frame)
                                 `[calibration]` / `[evaluation]` start the parts; without them the
                                 concept lines are split as flat images are, @track lines serve both
    frames/                      optional (absent: the shipped set's clips). Either calibration/ and
                                 evaluation/ folders (one clip each, 2 frames at least), or one flat
                                 clip: its first half (rounded up) calibrates, the rest evaluates
                                 (4 frames at least); every frame of a clip has one size

Every problem is one `ToolkitError` line naming the file. `CalibrationSet.digest(settings)` hashes
the content of every file used, the split, and the quantization settings: the export cache keys a
quantized artifact with it, so changing a photo, a prompt or a setting rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ToolkitError
from ..files.images import image_size_hw

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "calibration"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
PARTS = ("calibration", "evaluation")
EVERY = 4  # flat folders: every 4th item is evaluation
MAX_PROMPT_LINES = 10_000


@dataclass(frozen=True)
class Prompt:
    """A concept with optional positive boxes (x0, y0, x1, y1 normalised to 0..1)."""

    text: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    def boxes_px(self, size_hw: tuple[int, int]) -> list[tuple[float, float, float, float]]:
        height, width = size_hw
        return [(x0 * width, y0 * height, x1 * width, y1 * height) for x0, y0, x1, y1 in self.boxes]


@dataclass(frozen=True)
class TrackPrompt:
    """The tracker's prompt on a clip's first frame: a click ("point", x, y) or a box, normalised."""

    kind: str  # "point" | "box"
    values: tuple[float, ...]

    def click_prompt(self, size_hw: tuple[int, int]):
        """The pipeline's ClickPrompt in pixels of the frame."""
        from ..pipeline.video import ClickPrompt
        height, width = size_hw
        if self.kind == "point":
            x, y = self.values
            return ClickPrompt(points_xy=((x * width, y * height),), labels=(1,))
        x0, y0, x1, y1 = self.values
        return ClickPrompt(box_xyxy=(x0 * width, y0 * height, x1 * width, y1 * height))


DEFAULT_TRACK = TrackPrompt("point", (0.5, 0.5))


@dataclass(frozen=True)
class Sample:
    """One run of the image pipeline: a photo with a prompt."""

    image: Path
    prompt: Prompt


@dataclass(frozen=True)
class Part:
    name: str
    images: tuple[Path, ...]
    prompts: tuple[Prompt, ...]
    frames: tuple[Path, ...]
    track: TrackPrompt = DEFAULT_TRACK

    def samples(self, limit: int | None = None) -> list[Sample]:
        """Photos paired with prompts, round by round: round r pairs image i with prompt (i + r) mod P,
        so a limit covers every photo before any photo comes back, with a different prompt each time.
        Without a limit: every photo with every prompt."""
        n_img, n_prompt = len(self.images), len(self.prompts)
        out = [Sample(self.images[i], self.prompts[(i + r) % n_prompt])
               for r in range(n_prompt) for i in range(n_img)]
        return out if limit is None else out[:max(0, limit)]


@dataclass(frozen=True)
class CalibrationSet:
    root: Path
    calibration: Part
    evaluation: Part
    files: tuple[Path, ...] = field(default=())  # every file the set uses (hashed by digest)

    @classmethod
    def load(cls, directory: str | Path | None = None) -> CalibrationSet:
        """The set in `directory` (None: the shipped `calibration/`); one-line ToolkitError when bad."""
        root = Path(directory) if directory is not None else DEFAULT_DIR
        where = f"calibration set {root}"
        if not root.is_dir():
            raise ToolkitError(f"{where}: not a directory (expected images/, optional prompts.txt, optional frames/)")
        images = _images(root / "images", where)
        prompts_file = root / "prompts.txt"
        if not prompts_file.exists():
            prompts_file = DEFAULT_DIR / "prompts.txt"
        prompts, tracks = _read_prompts(prompts_file)
        frames_dir = root / "frames"
        if not frames_dir.exists():
            frames_dir = DEFAULT_DIR / "frames"
        frames = _frames(frames_dir, where)
        parts = {p: Part(p, images[p], prompts[p], frames[p], tracks.get(p, DEFAULT_TRACK)) for p in PARTS}
        for part in parts.values():
            _check_boxes_fit(part)
        used = sorted({*images["calibration"], *images["evaluation"], *frames["calibration"],
                       *frames["evaluation"], prompts_file}, key=str)
        return cls(root, parts["calibration"], parts["evaluation"], tuple(used))

    def part(self, name: str) -> Part:
        if name not in PARTS:
            raise ToolkitError(f"unknown calibration part {name!r}; the parts are {', '.join(PARTS)}")
        return getattr(self, name)

    def describe(self) -> dict:
        """JSON-ready summary (for a manifest): files per part, prompts, the tracker prompt."""
        def rel(path: Path) -> str:
            for base in (self.root, DEFAULT_DIR):
                try:
                    return str(path.relative_to(base))
                except ValueError:
                    continue
            return str(path)
        return {name: {"images": [rel(p) for p in part.images], "frames": [rel(p) for p in part.frames],
                       "prompts": [{"text": p.text, "boxes": [list(b) for b in p.boxes]} for p in part.prompts],
                       "track": {"kind": part.track.kind, "values": list(part.track.values)}}
                for name, part in ((n, self.part(n)) for n in PARTS)}

    def digest(self, settings: Mapping | None = None) -> str:
        """sha256 over the content of every file used, each file's part and role, the parsed prompts,
        and `settings` (the quantization settings, JSON-serialisable). File names are hashed by role
        and position, not by absolute path, so the same set in another folder has the same digest."""
        h = hashlib.sha256(b"esam3-calibration/1\n")
        roles = self.describe()
        h.update(json.dumps(roles, sort_keys=True).encode())
        for path in self.files:
            h.update(hashlib.sha256(path.read_bytes()).digest())
        h.update(json.dumps(settings or {}, sort_keys=True, default=str).encode())
        return h.hexdigest()


# --- reading -----------------------------------------------------------------------------------

def _image_files(folder: Path, where: str) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=lambda p: p.name)
    for path in files:
        if path.is_symlink():
            raise ToolkitError(f"{where}: {path} is a symbolic link; calibration files must be regular files")
        image_size_hw(path)  # a file that is not a readable single-frame image: one line from the loader
    return files


def _split_flat(items: list, where: str, what: str, minimum: int = 2) -> dict[str, tuple]:
    if len(items) < minimum:
        raise ToolkitError(f"{where}: {len(items)} {what}; a flat folder needs at least {minimum} to split into "
                           "a calibration and an evaluation part")
    chosen = {i for i in range(len(items)) if i % EVERY == EVERY - 1} or {len(items) - 1}
    return {"calibration": tuple(x for i, x in enumerate(items) if i not in chosen),
            "evaluation": tuple(x for i, x in enumerate(items) if i in chosen)}


def _images(folder: Path, where: str) -> dict[str, tuple[Path, ...]]:
    if not folder.is_dir():
        raise ToolkitError(f"{where}: no images/ folder")
    subs = {p: folder / p for p in PARTS if (folder / p).is_dir()}
    if len(subs) == 1:
        have = next(iter(subs))
        raise ToolkitError(f"{where}: images/{have}/ exists without images/"
                           f"{'evaluation' if have == 'calibration' else 'calibration'}/ (give both parts, "
                           "or put every image directly in images/)")
    if subs:
        out = {p: tuple(_image_files(subs[p], where)) for p in PARTS}
        empty = [p for p in PARTS if not out[p]]
        if empty:
            raise ToolkitError(f"{where}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in "
                               f"images/{empty[0]}/")
        return out
    return _split_flat(_image_files(folder, where), where, "images")


def _frames(folder: Path, where: str) -> dict[str, tuple[Path, ...]]:
    if not folder.is_dir():
        raise ToolkitError(f"{where}: frames/ is not a folder")
    subs = {p: folder / p for p in PARTS if (folder / p).is_dir()}
    if subs and len(subs) != 2:
        raise ToolkitError(f"{where}: frames/ has only {next(iter(subs))}/ (give both clips, or one flat clip)")
    if subs:
        out = {p: tuple(_image_files(subs[p], where)) for p in PARTS}
        short = next((p for p in PARTS if len(out[p]) < 2), None)
        if short:
            raise ToolkitError(f"{where}: frames/{short}/ holds {len(out[short])} frames; a clip needs at least 2")
    else:
        files = _image_files(folder, where)
        if len(files) < 4:
            raise ToolkitError(f"{where}: frames/ holds {len(files)} frames; a flat clip needs at least 4 "
                               "(its first half calibrates, the rest evaluates)")
        half = (len(files) + 1) // 2
        out = {"calibration": tuple(files[:half]), "evaluation": tuple(files[half:])}
    for part, clip in out.items():
        sizes = {p: image_size_hw(p) for p in clip}
        first = sizes[clip[0]]
        odd = next((p for p in clip if sizes[p] != first), None)
        if odd is not None:
            raise ToolkitError(f"{where}: frame {odd.name} of the {part} clip is {sizes[odd][1]}x{sizes[odd][0]}, "
                               f"{clip[0].name} is {first[1]}x{first[0]}; the frames of a clip have one size")
    return out


def _numbers(text: str, count: int, where: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ToolkitError(f"{where}: '{text.strip()}' is not {count} comma-separated numbers") from None
    if len(values) != count:
        raise ToolkitError(f"{where}: '{text.strip()}' has {len(values)} numbers, expected {count}")
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ToolkitError(f"{where}: '{text.strip()}' leaves 0..1 (coordinates are normalised to the image)")
    if count == 4 and not (values[0] < values[2] and values[1] < values[3]):
        raise ToolkitError(f"{where}: box '{text.strip()}' is empty (x0 < x1 and y0 < y1 expected)")
    return values


def _read_prompts(path: Path) -> tuple[dict[str, tuple[Prompt, ...]], dict[str, TrackPrompt]]:
    from ..pipeline.tokenizer import check_prompt_text
    if path.is_symlink() or not path.is_file():
        raise ToolkitError(f"{path}: not a regular file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ToolkitError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if len(lines) > MAX_PROMPT_LINES:
        raise ToolkitError(f"{path}: {len(lines)} lines; at most {MAX_PROMPT_LINES}")
    section: str | None = None
    sectioned = False
    concepts: dict[str | None, list[Prompt]] = {None: [], "calibration": [], "evaluation": []}
    tracks: dict[str | None, TrackPrompt] = {}
    for number, raw in enumerate(lines, 1):
        where = f"{path}:{number}"
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            if name not in PARTS:
                raise ToolkitError(f"{where}: unknown section [{name}]; the sections are [calibration] and "
                                   "[evaluation]")
            if concepts[None]:
                raise ToolkitError(f"{where}: prompts before the first section; put every prompt in a section "
                                   "or use none")
            section, sectioned = name, True
            continue
        if line.startswith("@"):
            words = line.split(None, 2)
            if words[0] != "@track" or len(words) != 3 or words[1] not in ("point", "box"):
                raise ToolkitError(f"{where}: '{line}' is not '@track point X,Y' or '@track box X0,Y0,X1,Y1'")
            if section in tracks:
                raise ToolkitError(f"{where}: a second @track line in the same part")
            tracks[section] = TrackPrompt(words[1], _numbers(words[2], 2 if words[1] == "point" else 4, where))
            continue
        text, _, box_text = line.partition("|")
        text = text.strip()
        try:
            check_prompt_text(text)
        except ToolkitError as err:
            raise ToolkitError(f"{where}: {err}") from None
        boxes = tuple(_numbers(b, 4, where) for b in box_text.split(";")) if box_text.strip() else ()
        concepts[section].append(Prompt(text, boxes))
    if sectioned:
        missing = [p for p in PARTS if not concepts[p]]
        if missing:
            raise ToolkitError(f"{path}: the [{missing[0]}] section has no concept prompt")
        prompts = {p: tuple(concepts[p]) for p in PARTS}
    else:
        prompts = _split_flat(concepts[None], str(path), "concept prompts")
    track = {p: tracks.get(p, tracks.get(None, DEFAULT_TRACK)) for p in PARTS}
    return prompts, track


def _check_boxes_fit(part: Part) -> None:
    """Normalised boxes always fit; a box must still be at least one pixel on the smallest image."""
    sizes = [image_size_hw(p) for p in part.images]
    for prompt in part.prompts:
        for box in prompt.boxes:
            for size in sizes:
                x0, y0, x1, y1 = Prompt(prompt.text, (box,)).boxes_px(size)[0]
                if x1 - x0 < 1 or y1 - y0 < 1:
                    raise ToolkitError(f"prompt '{prompt.text}': box {box} is under one pixel on a {size[1]}x"
                                       f"{size[0]} image of the {part.name} part")
