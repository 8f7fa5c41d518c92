"""Peak resident memory and wall time of whole runs from a bundle with the torch-free runtime,
beside the eager PyTorch pipeline, each in a fresh process (ru_maxrss via a small launcher:
toolkit.bench.memory.peak_rss_kib), plus per-component ONNX Runtime peaks with the default
session options ("before") and the runtime's ("after").

    .venv/bin/python benchmarks/runtime_memory.py BUNDLE --out benchmarks/results/DATE-runtime-memory.json [--frames 8]

Scenarios: image + text (docs/coffee.png, "person"), image + text + one box, click tracking over N
frames (coffee.png shifted 4 px right / 2 px down per frame, as the golden clip). "import" is a
child that only imports the runtime and onnxruntime (its footprint, included in every runtime figure). Runtime
children run `toolkit.runtime` only (no torch in the process: checked); eager children run the
`toolkit segment` / `toolkit track` pipelines with the embedded default weights.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from toolkit.bench.memory import peak_rss_kib
from toolkit.machine import cpu_line

BOX = (162.0, 68.0, 438.0, 268.0)
CHILD = r'''
import json, sys, time
spec = json.loads(sys.argv[1])
start = time.perf_counter()
import numpy as np
if spec["kind"] == "import":
    import onnxruntime
    import toolkit.runtime
elif spec["kind"] == "runtime":
    import toolkit.runtime as rt
    from toolkit.runtime.cli import Clicks, Folder, load_rgb
    from pathlib import Path
    bundle = rt.open_bundle(spec["bundle"], checksums=False)
    if spec["scenario"] == "track":
        session = rt.Tracker(bundle, spec["threads"], lean=spec["lean"]).prompt(
            Folder(Path(spec["frames"])), 0, Clicks(((312.0, 180.0),), (1,)))
        for _ in session.propagate():
            pass
    else:
        boxes = [tuple(spec["box"])] if spec["scenario"] == "image_text_box" else []
        rt.Segmenter(bundle, spec["threads"], lean=spec["lean"])(load_rgb(Path(spec["image"])), "person", boxes,
                                                                 threshold=0.5)
    assert "torch" not in sys.modules
elif spec["kind"] == "eager":
    import torch
    torch.set_num_threads(spec["threads"])
    from toolkit import api
    from toolkit.images import load_rgb
    from pathlib import Path
    if spec["scenario"] == "track":
        from toolkit.pipeline.video import ClickPrompt, open_frames
        tracker = api.load_video_tracker(None)[0]
        session = tracker.prompt(open_frames(spec["frames"]), 0, ClickPrompt(((312.0, 180.0),), (1,)))
        for _ in session.propagate():
            pass
    else:
        from toolkit.pipeline.image import ImageSegmenter
        boxes = [tuple(spec["box"])] if spec["scenario"] == "image_text_box" else []
        ImageSegmenter(api.load_detector(None)[0])(load_rgb(Path(spec["image"])), "person", boxes, threshold=0.5)
elif spec["kind"] == "component":
    import onnxruntime as ort
    from toolkit.runtime.sessions import run_options, session_options
    feeds = {k: v for k, v in np.load(spec["feeds"]).items()}
    so = session_options(spec["threads"], spec["lean"])
    session = ort.InferenceSession(spec["model"], so, providers=["CPUExecutionProvider"])
    for _ in range(2):
        session.run(None, feeds, run_options(spec["lean"]))
print(json.dumps({"seconds": time.perf_counter() - start}), file=sys.stderr)
'''


def child(spec: dict, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    spec = {**spec, "threads": threads}
    start = time.perf_counter()
    kib = peak_rss_kib([sys.executable, "-c", CHILD, json.dumps(spec)], env)
    return {"peak_rss_mib": round(kib / 1024, 1), "wall_s": round(time.perf_counter() - start, 2)}


def make_frames(directory: Path, count: int) -> Path:
    """coffee.png shifted right 4 px and down 2 px per frame, edge pixels repeated (the golden clip's rule)."""
    from PIL import Image
    rgb = np.asarray(Image.open(REPO / "docs" / "coffee.png").convert("RGB"))
    for t in range(count):
        shifted = np.pad(rgb, ((2 * t, 0), (4 * t, 0), (0, 0)), mode="edge")[:rgb.shape[0], :rgb.shape[1]]
        Image.fromarray(shifted).save(directory / f"{t}.png")
    return directory


def component_feeds(bundle: Path, name: str, directory: Path) -> Path:
    """The declared example feeds of a component (typical dimensions), saved for the child."""
    from toolkit.components import COMPONENTS
    feeds = {k: np.asarray(v) for k, v in COMPONENTS[name].example().items()}
    path = directory / f"{name}.npz"
    np.savez(path, **feeds)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("--out", required=True)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--components", default="fusion_encoder,memory_attention,vision_encoder,segmentation_head")
    parser.add_argument("--skip-eager", action="store_true")
    parser.add_argument("--label", default="", help="what this bundle's graphs are (e.g. chunked attention)")
    args = parser.parse_args()
    bundle = Path(args.bundle).resolve()
    result = {"date": datetime.date.today().isoformat(), "cpu": cpu_line(), "threads": args.threads,
              "bundle": str(bundle), "label": args.label, "frames": args.frames,
              "method": "ru_maxrss of a fresh child process per run (toolkit.bench.memory.peak_rss_kib); wall "
                        "time of the child, imports and session creation included",
              "runs": {}, "components": {}}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "frames").mkdir()
        frames = make_frames(Path(tmp) / "frames", args.frames)
        common = {"bundle": str(bundle), "image": str(REPO / "docs" / "coffee.png"), "frames": str(frames),
                  "box": list(BOX)}
        result["runs"]["import"] = child({"kind": "import"}, args.threads)
        print("import", result["runs"]["import"], flush=True)
        for scenario in ("image_text", "image_text_box", "track"):
            for kind, lean in (("runtime", True), ("runtime", False), ("eager", None)):
                if kind == "eager" and args.skip_eager:
                    continue
                key = f"{scenario}/{kind}" + ("" if lean is None else ("/lean" if lean else "/ort-defaults"))
                result["runs"][key] = child({**common, "kind": kind, "scenario": scenario, "lean": lean}, args.threads)
                print(key, result["runs"][key], flush=True)
        manifest = json.loads((bundle / "manifest.json").read_text())
        for name in filter(None, args.components.split(",")):
            feeds = component_feeds(bundle, name, Path(tmp))
            model = str(bundle / manifest["components"][name]["file"])
            for lean in (False, True):
                key = f"{name}/{'lean' if lean else 'ort-defaults'}"
                result["components"][key] = child({"kind": "component", "model": model, "feeds": str(feeds),
                                                   "lean": lean}, args.threads)
                print(key, result["components"][key], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
