import json
import sys
import time
from pathlib import Path

from toolkit.quantize import QuantSettings
from toolkit.quantize.evaluate import measure_component
from toolkit.quantize.feeds import FeedStore
from toolkit.quantize.ort import quantize_onnx
from toolkit.runners.ort_runner import OrtRunner

feeds = Path(sys.argv[1]); src = Path("/tmp/q-export/vision_encoder.onnx")
cal, ev = FeedStore(feeds / "calibration"), FeedStore(feeds / "evaluation")
ref = OrtRunner(src, threads=2)
out = {}
for method in ("percentile", "entropy"):
    t = time.perf_counter()
    q = quantize_onnx(src, f"/tmp/qprobe/ve-{method}.onnx", "int8", QuantSettings(method=method), lambda: cal.iter("vision_encoder"))
    m = measure_component(ref, OrtRunner(q.path, threads=2), ev.iter("vision_encoder"))
    out[method] = {"seconds": round(time.perf_counter() - t, 1), "quantize_s": round(q.seconds, 1), **{k: m["outputs"][k] for k in m["outputs"]}}
    print(method, q.seconds, {k: round(v["sqnr_db"], 2) for k, v in m["outputs"].items()}, flush=True)
json.dump(out, open("/tmp/qprobe/methods.json", "w"), indent=1)
