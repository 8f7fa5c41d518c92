"""Recording what each component really receives, and running the real pipelines over a
calibration set part.

Memory bound: **streamed to disk, subsampled**. `FeedRecorder` is a hook
`recorder(component_name, feeds)` called once per component call; it writes each call's feeds to
`DIR/<component>/<NNNN>.npz` at once and keeps nothing in memory but a content hash per call (so the
same feeds are stored once: the vision encoder runs once per photo however many prompts the photo
gets). At most `limit` distinct calls are stored per component: the first ones (the pipeline order
covers every photo before it repeats one); later calls are counted and dropped. `FeedStore.iter`
reads one sample at a time back, so the quantizers' calibration readers stream too. The biggest
per-call feeds are the segmentation head's (about 110 MB: the 288x288 and 144x144 pyramid levels),
so 8 samples take about 1 GB on disk and one sample in memory.

The calls come from the code that drives a bundle: `run_image_pipeline` / `run_tracker_pipeline`
give `toolkit.pipeline.image.ImageSegmenter` and `toolkit.pipeline.video.VideoTracker` (through
`toolkit.pipeline.artifacts.RunnerDetector` / `RunnerTracker`) component runners wrapped in
`RecordingRunner`, which calls the hook with the exact feeds each runner gets. With PyTorch runners
(`torch_runners`) that is the fp32 pipeline; with a quantized artifact's runners the same functions
give the end-to-end outputs the gate compares. When the component walk is unified (golden feeds and
bundles), the hook signature stays `recorder(component_name, feeds)`.
"""
from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ToolkitError
from ..runners import Runner

Hook = Callable[[str, Mapping[str, np.ndarray]], None]


def feeds_hash(feeds: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha1()
    for name in sorted(feeds):
        x = np.ascontiguousarray(feeds[name])
        h.update(f"{name}:{x.dtype}:{x.shape};".encode())
        h.update(x.tobytes())
    return h.hexdigest()


class FeedStore:
    """Recorded feeds on disk: `DIR/<component>/<NNNN>.npz`, read back one sample at a time."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def components(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def files(self, component: str) -> list[Path]:
        folder = self.root / component
        return sorted(folder.glob("*.npz")) if folder.is_dir() else []

    def count(self, component: str) -> int:
        return len(self.files(component))

    def iter(self, component: str, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        files = self.files(component)
        if not files:
            raise ToolkitError(f"no calibration feeds recorded for {component} in {self.root} (did the "
                               "calibration run reach it? the tracker needs frames, the detector images)")
        for path in files[:limit]:
            with np.load(path, allow_pickle=False) as z:
                yield {k: z[k] for k in z.files}

    def add(self, component: str, index: int, feeds: Mapping[str, np.ndarray]) -> Path:
        folder = self.root / component
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:04d}.npz"
        np.savez(path, **{k: np.asarray(v) for k, v in feeds.items()})
        return path


@dataclass
class FeedRecorder:
    """The hook: `recorder(component, feeds)` stores up to `limit` distinct feeds per component."""

    store: FeedStore
    limit: int = 8
    only: frozenset[str] | None = None  # components to record (None: all)
    seen: dict[str, set[str]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def __call__(self, component: str, feeds: Mapping[str, np.ndarray]) -> None:
        if self.only is not None and component not in self.only:
            return
        seen = self.seen.setdefault(component, set())
        key = feeds_hash(feeds)
        if key in seen:
            return
        if len(seen) >= self.limit:
            self.dropped[component] = self.dropped.get(component, 0) + 1
            return
        seen.add(key)
        self.store.add(component, len(seen) - 1, feeds)

    def summary(self) -> dict[str, dict]:
        return {c: {"recorded": len(s), "dropped": self.dropped.get(c, 0)} for c, s in sorted(self.seen.items())}


class RecordingRunner(Runner):
    """A runner that hands its feeds to the hook, then runs the wrapped runner."""

    def __init__(self, inner: Runner, component: str, hook: Hook):
        super().__init__(inner.input_names, inner.output_names)
        self.inner, self.component, self.hook = inner, component, hook
        self.name = inner.name

    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.hook(self.component, feeds)
        out = self.inner.infer(feeds)
        return [out[n] for n in self.output_names]


def recording(runners: Mapping[str, Runner], hook: Hook | None) -> dict[str, Runner]:
    return {name: RecordingRunner(r, name, hook) if hook is not None else r for name, r in runners.items()}


def torch_runners(graphs: Mapping, names) -> dict[str, Runner]:
    """fp32 PyTorch runners over the component graphs (`toolkit.verify.compare.Reference(...).graphs`)."""
    from ..components.registry import COMPONENTS
    return {n: COMPONENTS[n].torch_runner(graphs[n]) for n in names}


# --- the pipelines over a calibration part ---------------------------------------------------------

@dataclass
class ImageRun:
    """One image-pipeline sample's post-processed detections."""

    image: str
    prompt: str
    detections: object  # toolkit.pipeline.image.Detections


MAX_OBJECTS = 10  # the detections an fp32 run keeps per image (the gate's reference set)
# A quantized run keeps every query's detection, so that the fp32 top 10 are compared query by query
# whatever their rank: the untrained weights' 200 scores span less than 0.002 per image (evaluation part), and
# perturbations of 0.01 moved 9 of the fp32 top 10 out of the quantized top 30.
CANDIDATE_OBJECTS = None


def run_image_pipeline(runners: Mapping[str, Runner], part, hook: Hook | None = None, samples: int | None = None,
                       max_objects: int | None = MAX_OBJECTS, threshold: float = 0.0) -> list[ImageRun]:
    """`ImageSegmenter` (the pipeline of `toolkit segment` and of a bundle) over the part's samples
    with these detector runners; every component call goes to `hook` first. The top `max_objects`
    detections by score are kept (threshold 0: the untrained default weights score low)."""
    from ..files.images import load_rgb
    from ..pipeline.artifacts import RunnerDetector
    from ..pipeline.image import ImageSegmenter
    detector = RunnerDetector(recording(runners, hook))
    segmenter = ImageSegmenter(detector)
    out = []
    for sample in part.samples(samples):
        rgb = load_rgb(sample.image)
        boxes = sample.prompt.boxes_px(rgb.shape[:2])
        found = segmenter(rgb, sample.prompt.text, boxes, threshold=threshold, max_objects=max_objects)
        out.append(ImageRun(sample.image.name, sample.prompt.text, found))
    return out


def run_tracker_pipeline(runners: Mapping[str, Runner], part, hook: Hook | None = None,
                         frames: int | None = None) -> list[np.ndarray]:
    """`VideoTracker` (the pipeline of `toolkit track` and of a bundle) over the part's clip, prompted
    on its first frame with the part's @track prompt; returns the low-resolution mask logits of
    every frame (objects, 1, 288, 288), in frame order."""
    from ..pipeline.artifacts import RunnerTracker
    if len(part.frames) < 2:
        raise ToolkitError(f"the {part.name} part has no clip (frames/)")
    clip = _FileFrames(part.frames[:frames] if frames else part.frames)
    tracker = RunnerTracker(recording(runners, hook))
    logits: dict[int, np.ndarray] = {}

    def record(stage: str, tensors: Mapping) -> None:
        if stage.endswith("__09_final"):
            logits[int(stage[1:].split("_")[0])] = np.asarray(tensors["out.low_res_masks"], np.float32)

    session = tracker.prompt(clip, 0, part.track.click_prompt(clip.size_hw), record=record)
    for _ in session.propagate():
        pass
    return [logits[t] for t in sorted(logits)]


class _FileFrames:
    """A clip from explicit frame files (a part's frames), read with the same loader as `ImageFolder`."""

    def __init__(self, files):
        from ..files.images import image_size_hw
        self.files = list(files)
        self.names = [p.name for p in self.files]
        self.path = self.files[0].parent
        self.size_hw = image_size_hw(self.files[0])
        self.fps = None

    def __len__(self) -> int:
        return len(self.files)

    def rgb(self, index: int) -> np.ndarray:
        from ..files.images import load_rgb
        return load_rgb(self.files[index])


def record_feeds(runners: Mapping[str, Runner], calibration_set, out_dir: str | Path | None = None,
                 samples: int = 8, components=None, part: str = "calibration") -> tuple[FeedStore, dict]:
    """Run the fp32 pipelines (image: every detector component; tracker: the clip) over a part of
    the set (the calibration part to calibrate; the evaluation part for the gate's per-component
    measurement) and store up to `samples` distinct feeds per component. `runners` must hold
    the fp32 runners of the components the pipelines call (detector, tracker, or both; a pipeline
    whose runners are absent is skipped). Returns the store and the recorder's summary."""
    from ..pipeline.artifacts import DETECTOR_COMPONENTS, TRACKER_COMPONENTS
    root = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="esam3-calib-"))
    if out_dir is not None and root.exists() and any(root.iterdir()):
        raise ToolkitError(f"{root} is not empty: calibration feeds are recorded into an empty or new folder")
    store = FeedStore(root)
    recorder = FeedRecorder(store, samples, frozenset(components) if components else None)
    part = calibration_set.part(part)
    if all(n in runners for n in DETECTOR_COMPONENTS):
        run_image_pipeline(runners, part, recorder, samples)
    if all(n in runners for n in TRACKER_COMPONENTS):
        run_tracker_pipeline(runners, part, recorder)
    if not recorder.seen:
        raise ToolkitError("no pipeline could run: give the runners of every detector component "
                           f"({', '.join(DETECTOR_COMPONENTS)}) or every tracker component "
                           f"({', '.join(TRACKER_COMPONENTS)})")
    return store, recorder.summary()
