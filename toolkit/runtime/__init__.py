"""Running a bundle with numpy, ONNX Runtime and Pillow only: no PyTorch, no toolkit model code.

    from toolkit.runtime import open_bundle, Segmenter, Tracker
    bundle = open_bundle("out/bundle-cpu")              # schema + sha256 of every file
    found = Segmenter(bundle)(rgb, "person")            # boxes_xyxy_px, scores, masks, ...
    session = Tracker(bundle).prompt(frames, 0, click)  # then: for result in session.propagate()

Installed on its own by `pip install esam3-toolkit` (the base install is the runtime's
dependencies; the converter chain is the `convert` extra). Command line: `toolkit-run`
(`python -m toolkit.runtime`). `toolkit run` uses the same classes. Imports nothing of the toolkit
outside this package (numpy, onnxruntime, Pillow, regex, ftfy, jsonschema): a test installs it alone.
"""
from .bundle import Bundle, open_bundle
from .errors import RuntimeInputError
from .image import Detections, Segmenter
from .video import Tracker

__all__ = ["Bundle", "Detections", "RuntimeInputError", "Segmenter", "Tracker", "open_bundle"]
