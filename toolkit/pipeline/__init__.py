"""Pipelines above the model: pre-processing, prompt assembly, post-processing, stage dumps.

    preprocess.py   image pre-processing of the two paths (detector, tracker)
    tokenizer.py    the CLIP BPE tokenizer on the PyTorch side (the runtime's algorithm)
    postprocess.py  detector outputs -> detections in image pixels (numpy only)
    stages.py       the protocols `DetectorStages` / `TrackerStages` the pipelines are typed against
    image.py        `ImageSegmenter`; video.py `VideoTracker`; memory_bank.py the tracker's memory
    artifacts.py    the same pipelines over artifact runners (what verification and the quantization
                    gate run; a device runs `toolkit.runtime`)
    intermediates.py  stage dumps

Imports: model, runners, backends, errors, deploy.bundle (artifacts.py, to read a bundle).
"""
