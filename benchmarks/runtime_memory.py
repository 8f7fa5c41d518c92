"""Peak resident memory and wall time of whole runs from a bundle with the torch-free runtime,
beside the eager PyTorch pipeline, each in a fresh process, plus per-component ONNX Runtime peaks
with the default session options ("before") and the runtime's ("after"). The measurement itself is
`toolkit.bench.wholerun` (also used by `toolkit bench --bundle`).

    .venv/bin/python benchmarks/runtime_memory.py BUNDLE --out benchmarks/results/DATE-runtime-memory.json [--frames 8]

Scenarios: image + text (coffee.png, "person"), image + text + one box, click tracking over N
frames (coffee.png shifted 4 px right / 2 px down per frame, as the golden clip), as prepared by
`toolkit.bench.scenarios.prepare_inputs`. "import" is a child that only imports the runtime and
onnxruntime (its footprint, included in every runtime figure). Runtime children run
`toolkit.runtime` only (no torch in the process: checked); eager children run the `toolkit segment`
/ `toolkit track` pipelines with the embedded default weights.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from toolkit.bench.scenarios import prepare_inputs
from toolkit.bench.wholerun import METHOD, scenario_spec, whole_run
from toolkit.machine import cpu_line

SCENARIOS = ("image_text", "image_text_boxes", "tracking")


def component_feeds(name: str, directory: Path) -> Path:
    """The declared example feeds of a component (typical dimensions), saved for the child."""
    from toolkit.components.registry import COMPONENTS
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
              "bundle": str(bundle), "label": args.label, "frames": args.frames, "method": METHOD,
              "runs": {}, "components": {}}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = prepare_inputs(Path(tmp) / "inputs", args.frames)
        result["runs"]["import"] = whole_run({"kind": "import"}, args.threads)
        print("import", result["runs"]["import"], flush=True)
        for scenario in SCENARIOS:
            for kind, lean in (("runtime", True), ("runtime", False), ("eager", None)):
                if kind == "eager" and args.skip_eager:
                    continue
                key = f"{scenario}/{kind}" + ("" if lean is None else ("/lean" if lean else "/ort-defaults"))
                spec = scenario_spec(kind, scenario, inputs, bundle, lean=bool(lean))
                result["runs"][key] = whole_run(spec, args.threads)
                print(key, result["runs"][key], flush=True)
        manifest = json.loads((bundle / "manifest.json").read_text())
        for name in filter(None, args.components.split(",")):
            feeds = component_feeds(name, Path(tmp))
            model = str(bundle / manifest["components"][name]["file"])
            for lean in (False, True):
                key = f"{name}/{'lean' if lean else 'ort-defaults'}"
                result["components"][key] = whole_run({"kind": "component", "model": model, "feeds": str(feeds),
                                                       "lean": lean}, args.threads)
                print(key, result["components"][key], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
