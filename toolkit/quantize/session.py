"""One build's (or one `toolkit verify`'s) calibration: the set, the settings, and the feeds, recorded
once and lazily by the fp32 pipelines a bundle runs, then the gate's two measurements.

- `Calibration.store(part)`: the fp32 pipelines (`ImageSegmenter` over `RunnerDetector`, the walk of
  `toolkit.components.registry.ground`; `VideoTracker` over `RunnerTracker`) run with PyTorch runners over the
  part, and `FeedRecorder` streams each quantized component's distinct feeds to
  `work/<part>/<component>/NNNN.npz` (one sample in memory). Only the pipelines that reach the
  quantized components run (the detector for detector components, the tracker for the others), on
  `samples` images / max(2, samples) clip frames. The evaluation run's fp32 outputs (detections,
  per-frame mask logits) are kept: they are the end-to-end reference.
- `alone(name, reference, candidate)`: (a) of the gate on the evaluation feeds. The fp32 reference's
  outputs are computed once per component and kept beside the feeds (`work/reference/`): every rung of
  a ladder and the verification of the chosen file compare with the same numbers. (Re-running the
  PyTorch reference per rung cost about two minutes of the full-size android build.)
- `end_to_end(candidates)`: (b) of the gate: the pipelines with these component runners (the others
  fp32 PyTorch) against the fp32 run.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..runners import Runner
from .calibration import CalibrationSet
from .evaluate import DETECTOR_FIGURES, detector_figures, measure_against
from .feeds import (
    CANDIDATE_OBJECTS,
    MAX_OBJECTS,
    FeedRecorder,
    FeedStore,
    run_image_pipeline,
    run_tracker_pipeline,
    torch_runners,
)
from .gate import QuantSettings
from .metrics import track_figures

DETECTOR = "detector"
TRACKER = "tracker"


def pipelines_for(components: Iterable[str]) -> list[str]:
    """The pipelines whose runs reach `components` (the vision encoder is in both: the detector's suffices)."""
    from ..pipeline.artifacts import DETECTOR_COMPONENTS, TRACKER_COMPONENTS
    names = set(components)
    out = []
    if names & set(DETECTOR_COMPONENTS):
        out.append(DETECTOR)
    if names & (set(TRACKER_COMPONENTS) - set(DETECTOR_COMPONENTS)):
        out.append(TRACKER)
    return out


# The end-to-end figures each pipeline yields (`Calibration.end_to_end`).
PIPELINE_FIGURES = {DETECTOR: DETECTOR_FIGURES, TRACKER: ("track_iou",)}


def components_behind(figure: str) -> tuple[str, ...]:
    """The components of the pipeline whose end-to-end `figure` this is (none for an unknown figure)."""
    from ..pipeline.artifacts import DETECTOR_COMPONENTS, TRACKER_COMPONENTS
    pipeline = next((p for p, figures in PIPELINE_FIGURES.items() if figure in figures), None)
    return {DETECTOR: tuple(DETECTOR_COMPONENTS), TRACKER: tuple(TRACKER_COMPONENTS)}.get(pipeline, ())


class Calibration:
    def __init__(self, settings: QuantSettings, components: Iterable[str], graphs, directory: str | Path | None = None,
                 work: str | Path | None = None, progress: Callable[[str], None] = lambda message: None):
        self.settings, self.components, self.graphs = settings, list(components), graphs
        self.directory, self.progress = directory, progress
        self._work = Path(work) if work is not None else None
        self._own_work = work is None
        self._set: CalibrationSet | None = None
        self._stores: dict[str, FeedStore] = {}
        self.reference_runs: dict[str, list] = {}  # pipeline -> fp32 outputs on the evaluation part
        self.recorded: dict[str, dict] = {}  # part -> recorder summary and seconds

    # --- the set ------------------------------------------------------------------------------
    @property
    def set(self) -> CalibrationSet:
        if self._set is None:
            self._set = CalibrationSet.load(self.directory)
        return self._set

    def samples(self) -> int:
        return max(self.settings.for_component(n).samples for n in self.components) if self.components else \
            self.settings.samples

    def digest(self, name: str | None = None) -> str:
        """The calibration set's digest with the (component's) settings: part of every quantized artifact's key."""
        settings = (self.settings.for_component(name) if name else self.settings).to_dict()
        settings.pop("gate")  # the gate judges artifacts, it does not make them: changing it must not re-quantize
        return self.set.digest(settings)

    def describe(self) -> dict:
        return {"directory": str(self.set.root), "digest": self.digest(), "samples": self.samples(),
                "parts": self.set.describe(), "recorded": self.recorded}

    # --- feeds ----------------------------------------------------------------------------------
    @property
    def work(self) -> Path:
        if self._work is None:
            self._work = Path(tempfile.mkdtemp(prefix="esam3-calib-"))
        self._work.mkdir(parents=True, exist_ok=True)
        return self._work

    def store(self, part: str) -> FeedStore:
        """The recorded feeds of `part` ("calibration" | "evaluation"), recorded on first use."""
        if part not in self._stores:
            import time
            start = time.perf_counter()
            samples = self.samples()
            pipelines = pipelines_for(self.components)
            self.progress(f"calibration: running the fp32 {' and '.join(pipelines)} pipeline(s) over the {part} part "
                          f"of {self.set.root} ({samples} samples) to record the feeds of "
                          f"{', '.join(self.components)}")
            store = FeedStore(self.work / part)
            recorder = FeedRecorder(store, samples, frozenset(self.components))
            runs = self._run(pipelines, part, recorder, None)
            if part == "evaluation":
                self.reference_runs = runs
            self._stores[part] = store
            self.recorded[part] = {"components": recorder.summary(), "seconds": round(time.perf_counter() - start, 1)}
        return self._stores[part]

    def feeds(self, part: str, name: str) -> Callable:
        """A callable returning a fresh stream of `name`'s recorded feeds (what the calibrators re-read)."""
        store, limit = self.store(part), self.settings.for_component(name).samples
        return lambda: store.iter(name, limit)

    def _runners(self, pipelines: list[str], candidates: Mapping[str, Runner]) -> dict[str, Runner]:
        from ..pipeline.artifacts import DETECTOR_COMPONENTS, TRACKER_COMPONENTS
        names = set()
        for p in pipelines:
            names |= set(DETECTOR_COMPONENTS if p == DETECTOR else TRACKER_COMPONENTS)
        runners = torch_runners(self.graphs, sorted(names - set(candidates)))
        return {**runners, **{n: r for n, r in candidates.items() if n in names}}

    def _run(self, pipelines: list[str], part: str, hook, candidates: Mapping[str, Runner] | None) -> dict[str, list]:
        runners = self._runners(pipelines, candidates or {})
        the_part, samples = self.set.part(part), self.samples()
        out = {}
        if DETECTOR in pipelines:  # a candidate run keeps every query (feeds.CANDIDATE_OBJECTS)
            out[DETECTOR] = run_image_pipeline(runners, the_part, hook, samples,
                                               max_objects=CANDIDATE_OBJECTS if candidates else MAX_OBJECTS)
        if TRACKER in pipelines:
            out[TRACKER] = run_tracker_pipeline(runners, the_part, hook, frames=max(2, samples))
        return out

    # --- the gate's measurements -------------------------------------------------------------------
    def alone(self, name: str, reference: Runner, candidate: Runner, masks: Iterable[str] = ()) -> dict:
        """(a): the candidate against the fp32 reference on the evaluation feeds of `name`. `reference` is
        the component's fp32 reference (every caller's): its outputs are computed on the first call only."""
        margin = self.settings.for_component(name).mask_margin
        feeds, outputs = self.feeds("evaluation", name), FeedStore(self.work / "reference")
        if not outputs.count(name):  # one sample in memory at a time, as the feeds
            partial = FeedStore(self.work / "reference.partial")  # a failed reference run leaves no half store
            shutil.rmtree(partial.root / name, ignore_errors=True)
            for index, sample in enumerate(feeds()):
                partial.add(name, index, reference.infer(dict(sample)))
            outputs.root.mkdir(parents=True, exist_ok=True)
            (partial.root / name).rename(outputs.root / name)
        return measure_against(zip(feeds(), outputs.iter(name), strict=True), candidate, reference.output_names,
                               masks, margin)

    def end_to_end(self, candidates: Mapping[str, Runner]) -> dict:
        """(b): the pipelines reaching `candidates`, with them in place of the fp32 components, against
        the fp32 pipelines on the evaluation part. {"figures": worst of both pipelines, "detector": per
        sample, "tracker": per frame}."""
        self.store("evaluation")  # the fp32 run
        pipelines = pipelines_for(candidates)
        self.progress(f"end to end: the {' and '.join(pipelines)} pipeline(s) with {', '.join(sorted(candidates))} "
                      "quantized, against fp32")
        got = self._run(pipelines, "evaluation", None, candidates)
        margin = self.settings.mask_margin
        result: dict = {"figures": {}}
        if DETECTOR in got:
            result[DETECTOR], figures = detector_figures(self.reference_runs[DETECTOR], got[DETECTOR], margin)
            result["figures"].update(figures)
        if TRACKER in got:
            figures = track_figures(self.reference_runs[TRACKER], got[TRACKER], margin)
            result[TRACKER] = {k: v for k, v in figures.items()}
            result["figures"]["track_iou"] = figures["track_iou"]
        return result

    def close(self) -> None:
        if self._own_work and self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
        self._stores.clear()

