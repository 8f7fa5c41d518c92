"""The detector's component chain, walked once for every way of running it.

`ground(run, ...)` is upstream's `forward_grounding` as a walk over the deployable components:
`run(component name, **named feeds) -> named outputs` is a PyTorch component graph, an artifact
runner, a recorder around one (`toolkit.components.registry.golden_feeds`, `toolkit.pipeline.artifacts.RunnerDetector`,
the calibration feeds), the torch-free runtime's sessions (`toolkit.runtime.image.Segmenter`), or the
`Detector`'s own stage methods (`Detector.forward_grounding`). The walk itself is array-agnostic:
numpy arrays, or torch tensors with `concat=torch.cat`. Imports numpy only (the runtime uses it).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# run(component name, **named feeds) -> its named outputs
Run = Callable[..., dict[str, Any]]
NO_BOXES = (np.zeros((0, 1, 4), np.float32), np.zeros((0, 1), bool))


def ground(run: Run, image: Mapping[str, Any], text: Mapping[str, Any], boxes: Any = None, box_labels: Any = None,
           concat: Callable = np.concatenate) -> dict[str, Any]:
    """The detector's chain after the image and text encoders (upstream `forward_grounding`):
    geometry encoder on the boxes (none: zero boxes), prompt = text tokens ++ geometry tokens (with
    their padding masks), fusion encoder, fusion decoder, scoring, segmentation head.

    `image`: vision_encoder outputs; `text`: text_encoder outputs (or a prompt-cache entry); boxes
    (boxes, 1, 4) float32 normalised cx, cy, w, h with bool labels (boxes, 1), True = positive.
    Returns every output of those components by name, plus `prompt` and `prompt_mask`.
    """
    if boxes is None:
        boxes, box_labels = NO_BOXES
    geometry = run("geometry_encoder", boxes=boxes, box_labels=box_labels, image_features=image["fpn_72"],
                   image_pos=image["image_pos"])
    prompt = {"prompt": concat([text["text_features"], geometry["geometry_tokens"]], 0),
              "prompt_mask": concat([text["text_mask"], geometry["geometry_mask"]], 1)}
    memory = run("fusion_encoder", image_features=image["fpn_72"], image_pos=image["image_pos"], **prompt)
    decoded = run("fusion_decoder", memory=memory["memory"], image_pos=image["image_pos"], **prompt)
    scores = run("scoring", queries=decoded["queries"], **prompt)
    masks = run("segmentation_head", fpn_288=image["fpn_288"], fpn_144=image["fpn_144"], queries=decoded["queries"],
                memory=memory["memory"], **prompt)
    return {**geometry, **prompt, **memory, **decoded, **scores, **masks}
