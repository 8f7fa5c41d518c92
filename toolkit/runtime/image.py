"""Image path from a bundle: RGB image + text (+ boxes) -> detections, numpy + ONNX Runtime only.

The steps of `toolkit segment` (`toolkit.pipeline.image.ImageSegmenter`), over the bundle's
components: pre-processing, tokenizer or prompt cache, the walk of the detector chain (prompt
assembly: text tokens ++ geometry tokens, then the five detector graphs; `ground`, the walk of
`toolkit segment` too), post-processing. Each component's session is released as soon
as the run no longer needs it (`resident=True` keeps them for an app that segments many images).
`record(stage, arrays)` receives the stage tensors under the golden manifest's names, as the
reference's `--save-intermediates` does.
"""
from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._shared import ground, postprocess_grounding, sigmoid
from .bundle import Bundle
from .errors import RuntimeInputError
from .preprocess import preprocess_image
from .sessions import Sessions
from .tokenizer import BpeTokenizer

Record = Callable[[str, dict], None]


@dataclass
class Detections:
    """Kept objects of one image, in query order (as `toolkit.pipeline.image.Detections`)."""

    boxes_xyxy_px: np.ndarray  # (N, 4) float32, original-image pixels
    scores: np.ndarray         # (N,) float32
    masks: np.ndarray          # (N, H, W) bool
    mask_probs: np.ndarray     # (N, H, W) float32
    query_indices: np.ndarray  # (N,) int64


class PromptCache:
    """Text-encoder outputs of the bundle's fixed concepts, looked up by token ids."""

    def __init__(self, bundle: Bundle):
        info = bundle.manifest["prompt_cache"]
        self.entries: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.hits = 0
        if info is None:
            return
        try:
            with np.load(bundle.path(info["file"])) as z:  # allow_pickle=False: object arrays are refused
                ids, features, mask = (np.asarray(z[k]) for k in ("token_ids", "text_features", "text_mask"))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise RuntimeInputError(f"bundle {bundle.root}: {info['file']} is not a prompt cache: {e}") from e
        if not len(ids) == len(features) == len(mask) == len(info["concepts"]):
            raise RuntimeInputError(f"bundle {bundle.root}: {info['file']} does not hold one entry per concept")
        self.entries = {tuple(row.tolist()): (features[i], mask[i]) for i, row in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.entries)

    @staticmethod
    def _key(token_ids: np.ndarray) -> tuple:
        return tuple(np.asarray(token_ids).reshape(-1).tolist())

    def __contains__(self, token_ids: np.ndarray) -> bool:
        return self._key(token_ids) in self.entries

    def lookup(self, token_ids: np.ndarray) -> dict[str, np.ndarray] | None:
        found = self.entries.get(self._key(token_ids))
        if found is None:
            return None
        self.hits += 1
        return {"text_features": found[0][:, None], "text_mask": found[1][None]}


def check_boxes(boxes_xyxy, image_hw) -> None:
    """Refuse boxes (pixel x0,y0,x1,y1) that are empty, inverted or leave the image (also the check of
    `toolkit segment`: `toolkit.pipeline.image.check_prompt`)."""
    height, width = image_hw
    for x0, y0, x1, y1 in boxes_xyxy:
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise RuntimeInputError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is not a non-empty box inside the "
                                    f"{width}x{height} image (x0,y0,x1,y1 in pixels)")


def boxes_to_prompt(boxes_xyxy, positive, image_hw) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x0,y0,x1,y1 boxes -> (N,1,4) normalised cx,cy,w,h float32 and (N,1) bool labels (Python
    floats, then float32; also `toolkit segment`'s: `toolkit.pipeline.image.boxes_px_to_prompt`)."""
    height, width = image_hw
    rows = [[(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
            for x0, y0, x1, y1 in boxes_xyxy]
    return np.array(rows, np.float32).reshape(-1, 1, 4), np.array(positive, bool).reshape(-1, 1)


class Segmenter:
    """`toolkit segment` from a bundle: `segmenter(rgb, prompt, boxes, positive, threshold, max_objects)`."""

    is_pipeline = True  # `toolkit run` passes it to toolkit.api's segment / track as the whole pipeline

    def __init__(self, bundle: Bundle, threads: int | None = None, lean: bool = True, resident: bool = False):
        self.bundle = bundle
        self.sessions = Sessions(bundle, threads, lean)
        self.resident = resident
        self.tokenizer = BpeTokenizer(bundle.path(bundle.manifest["tokenizer"]["vocabulary"]))
        tok = bundle.manifest["tokenizer"]
        if (tok["start_id"], tok["end_id"]) != (self.tokenizer.start_id, self.tokenizer.end_id):
            raise RuntimeInputError(f"bundle {bundle.root}: the manifest's start/end ids are not those of its "
                                    "vocabulary")
        self.prompt_cache = PromptCache(bundle)

    def _done(self, *names: str) -> None:
        if not self.resident:
            self.sessions.release(*names)

    def check(self, prompt: str, boxes_xyxy, image_hw) -> None:
        self.tokenizer.check(prompt)
        if "text_encoder" not in self.bundle.manifest["components"] and self.tokenizer(prompt) not in self.prompt_cache:
            if not len(self.prompt_cache):
                raise RuntimeInputError(f"bundle {self.bundle.root} has no component 'text_encoder' and no prompt "
                                        "cache (a partial build?)")
            raise RuntimeInputError(f"prompt {prompt!r} is not one of the {len(self.prompt_cache)} concepts of the "
                                    f"bundle's prompt cache, and the bundle has no text encoder to encode it")
        check_boxes(boxes_xyxy, image_hw)

    def __call__(self, rgb: np.ndarray, prompt: str, boxes_xyxy_px=(), box_positive=None, threshold: float = 0.5,
                 max_objects: int | None = None, record: Record | None = None) -> Detections:
        image_hw = rgb.shape[:2]
        self.check(prompt, boxes_xyxy_px, image_hw)
        run = self.sessions.run
        # Text first: the text encoder (63M parameters) is released before the image's features exist.
        ids = self.tokenizer(prompt)
        text = self.prompt_cache.lookup(ids)
        if text is None:
            text = run("text_encoder", token_ids=ids)
            self._done("text_encoder")
        image = preprocess_image(rgb)
        vision = run("vision_encoder", image=image)
        self._done("vision_encoder")
        if record is not None:
            record("00_preprocess", {"image": image})
            record("02_trunk_with_head", {"out.0": vision["backbone_features"]})
            record("03_neck", {"out.vision_features": vision["fpn_72"], "out.vision_pos_enc.2": vision["image_pos"],
                               **{f"out.backbone_fpn.{i}": vision[f"fpn_{s}"] for i, s in enumerate((288, 144, 72))}})
            record("04_tokenizer", {"ids": ids})
            record("05d_forward_text", {"out.language_features": text["text_features"],
                                        "out.language_mask": text["text_mask"]})
        del image, vision["backbone_features"]  # the trunk output (1024x72x72) is the tracker's, not needed here
        positive = list(box_positive) if box_positive is not None else [True] * len(boxes_xyxy_px)
        boxes, labels = boxes_to_prompt(list(boxes_xyxy_px), positive, image_hw) if len(boxes_xyxy_px) else (
            None, None)

        def run_once(name: str, **feeds) -> dict[str, np.ndarray]:  # each component runs once per image
            out = run(name, **feeds)
            self._done(name)
            return out
        found = ground(run_once, vision, text, boxes, labels)
        if record is not None:
            record("06_geometry_encoder", {"out.0": found["geometry_tokens"], "out.1": found["geometry_mask"]})
            record("07_fusion_encoder", {"out.memory": found["memory"]})
            record("11_grounding_out", {
                "out.encoder_hidden_states": found["memory"], "out.queries": found["queries"],
                "out.presence_logit_dec": found["presence_logit"], "out.pred_logits": found["pred_logits"],
                "out.pred_boxes": found["pred_boxes"], "out.pred_masks": found["pred_masks"],
                "out.semantic_seg": found["semantic_seg"]})
        logits, presence, pred_boxes, pred_masks = (found[k] for k in ("pred_logits", "presence_logit", "pred_boxes",
                                                                       "pred_masks"))
        del vision, found
        scores = (sigmoid(logits[0, :, 0]) * sigmoid(presence[0, 0])).astype(np.float32)
        chosen = np.flatnonzero(scores > threshold)  # the same score as postprocess_grounding's
        if max_objects is not None and len(chosen) > max_objects and record is None:
            # only the kept masks are resized to the image (200 x H x W float32 would be the run's peak)
            chosen = np.sort(chosen[np.argsort(-scores[chosen], kind="stable")[:max_objects]])
        else:
            chosen = np.arange(scores.shape[0])
        found = postprocess_grounding(logits[:, chosen], pred_boxes[:, chosen], pred_masks[:, chosen], presence,
                                      image_hw, threshold)
        found["query_indices"] = chosen[found["query_indices"]]
        if record is not None:
            record("12_postprocess", {f"out.{k}": v for k, v in found.items() if k != "query_indices"})
        keep = np.arange(len(found["scores"]))
        if max_objects is not None and len(keep) > max_objects:
            keep = np.sort(np.argsort(-found["scores"], kind="stable")[:max_objects])
        return Detections(boxes_xyxy_px=found["boxes_xyxy_px"][keep], scores=found["scores"][keep],
                          masks=found["masks"][keep, 0], mask_probs=found["mask_probs"][keep, 0],
                          query_indices=found["query_indices"][keep])
