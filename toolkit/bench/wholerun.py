"""Peak resident memory and wall time of whole runs, each in a fresh process.

One child process per run, started by `memory.peak_rss_kib`'s launcher (so the figure is the child's
own `ru_maxrss`, not the benchmark process's high-water mark). Kinds of run (`spec["kind"]`):

  import     imports `toolkit.runtime` and onnxruntime, then exits: the runtime's import footprint,
             included in every runtime figure (stated beside them)
  runtime    one scenario from a bundle with the torch-free runtime (`toolkit.runtime` Segmenter /
             Tracker, as `toolkit-run` does it); the child asserts that torch was never imported
  eager      the same scenario on the PyTorch pipelines of `toolkit segment` / `toolkit track`
             (`checkpoint`, or the embedded default weights: deterministic, NOT trained)
  component  one ONNX Runtime artifact run twice on saved feeds, with the runtime's session options
             (`lean`) or ONNX Runtime's defaults

Scenarios are those of `scenarios.py` (image_text, image_text_boxes, tracking) on the inputs it
prepares (image.png, frames/). The child is this module run as `python -m toolkit.bench.wholerun
SPEC_JSON`: it imports `toolkit.bench` (numpy) before the kind's own imports, in every kind alike.
Used by `toolkit bench --bundle` and benchmarks/runtime_memory.py.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .memory import peak_rss_kib

METHOD = ("ru_maxrss of a fresh child process per whole run (toolkit.bench.wholerun, started by a small "
          "launcher); wall time of the child, imports and session creation included")
CLICK_XY = (312.0, 180.0)  # the golden click (scenarios.CLICK_XY)
BOX_XYXY = (162.0, 68.0, 438.0, 268.0)  # the golden box (scenarios.BOX_XYXY)
PROMPT = "person"
_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the toolkit package


def whole_run(spec: dict, threads: int, timeout: float = 3600) -> dict:
    """{"peak_rss_mib", "wall_s"} of one run in a fresh child process; raises RuntimeError when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    start = time.perf_counter()
    kib = peak_rss_kib([sys.executable, "-m", "toolkit.bench.wholerun", json.dumps({**spec, "threads": threads})],
                       env, timeout)
    return {"peak_rss_mib": round(kib / 1024, 1), "wall_s": round(time.perf_counter() - start, 2)}


def scenario_spec(kind: str, scenario: str, inputs: str | Path, bundle: str | Path | None = None,
                  checkpoint: str | None = None, lean: bool = True) -> dict:
    """The spec of one scenario run (`kind` runtime or eager) on the prepared inputs."""
    inputs = Path(inputs)
    return {"kind": kind, "scenario": scenario, "image": str(inputs / "image.png"), "frames": str(inputs / "frames"),
            "bundle": str(bundle) if bundle else None, "checkpoint": checkpoint, "lean": lean}


def _runtime(spec: dict) -> None:
    import toolkit.runtime as rt
    from toolkit.runtime.cli import Clicks, Folder, load_rgb

    bundle = rt.open_bundle(spec["bundle"], checksums=False)  # checked by the parent
    if spec["scenario"] == "tracking":
        session = rt.Tracker(bundle, spec["threads"], lean=spec["lean"]).prompt(
            Folder(Path(spec["frames"])), 0, Clicks((CLICK_XY,), (1,)))
        for _ in session.propagate():
            pass
    else:
        boxes = [BOX_XYXY] if spec["scenario"] == "image_text_boxes" else []
        rt.Segmenter(bundle, spec["threads"], lean=spec["lean"])(load_rgb(Path(spec["image"])), PROMPT, boxes)
    if "torch" in sys.modules:
        raise RuntimeError("the runtime run imported torch")


def _eager(spec: dict) -> None:
    import torch

    from toolkit import api
    from toolkit.files.images import load_rgb

    torch.set_num_threads(spec["threads"])
    if spec["scenario"] == "tracking":
        from toolkit.pipeline.video import ClickPrompt, open_frames
        tracker = api.load_video_tracker(spec.get("checkpoint"))[0]
        session = tracker.prompt(open_frames(spec["frames"]), 0, ClickPrompt((CLICK_XY,), (1,)))
        for _ in session.propagate():
            pass
    else:
        from toolkit.pipeline.image import ImageSegmenter
        boxes = [BOX_XYXY] if spec["scenario"] == "image_text_boxes" else []
        ImageSegmenter(api.load_detector(spec.get("checkpoint"))[0])(load_rgb(Path(spec["image"])), PROMPT, boxes)


def _component(spec: dict) -> None:
    import numpy as np
    import onnxruntime as ort

    from toolkit.runtime.sessions import run_options, session_options

    with np.load(spec["feeds"]) as z:
        feeds = {k: z[k] for k in z.files}
    session = ort.InferenceSession(spec["model"], session_options(spec["threads"], spec["lean"]),
                                   providers=["CPUExecutionProvider"])
    for _ in range(2):
        session.run(None, feeds, run_options(spec["lean"]))


def _child(spec: dict) -> None:
    if spec["kind"] == "import":
        import onnxruntime  # noqa: F401

        import toolkit.runtime  # noqa: F401
    else:
        {"runtime": _runtime, "eager": _eager, "component": _component}[spec["kind"]](spec)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
