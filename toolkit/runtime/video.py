"""Tracking from a bundle: clicks or a box on one frame, followed through the frames (numpy + ONNX Runtime).

The steps of `toolkit track` for click / box prompts (`toolkit.pipeline.video.VideoTracker` over
`toolkit.model.tracker.TrackerModules.sam_heads`), over the bundle's tracker components: frame
pre-processing, prompt encoder, mask decoder, the mask choice (best predicted IoU of the three
multimask outputs, or mask 0 with its stability fallback), object pointer, the memory bank
(`toolkit/pipeline/memory_bank.py`, shared), memory attention, the memory encoder's mask input
(the chosen 288 mask resized bilinearly to 1008, then `> 0` on the clicked frame, sigmoid on a
tracked one), and the frame output (the 288 mask resized to the frame, `> 0`). Memories are stored
in bfloat16 as upstream stores them (rounded to nearest even, kept as the upper 16 bits).
Text prompts need the mask-prompt path, which no component exports: a bundle tracks clicks and boxes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ._shared import MemoryBank, frame_quality, resize_bilinear, sigmoid, use_multimask
from .bundle import Bundle
from .errors import RuntimeInputError
from .preprocess import IMAGE_SIZE, preprocess_frame
from .sessions import Sessions

Record = Callable[[str, dict], None]
NO_OBJECT_SCORE = -1024.0  # mask logits of an object predicted absent
# Single-mask output (more than one prompt point): mask 0 unless unstable, i.e. the areas above
# +delta and above -delta differ by more than 2 % (toolkit.model.tracker.mask_decoder; a test checks both agree).
STABILITY_DELTA, STABILITY_THRESH = 0.05, 0.98
MAX_PROMPT_POINTS = 16
TRACKER_COMPONENTS = ("vision_encoder", "tracker_neck", "prompt_encoder", "mask_decoder", "object_pointer",
                      "memory_encoder", "memory_attention")


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even, as torch's `.to(torch.bfloat16)` (finite values)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass
class Memory:
    features: np.ndarray  # (B,64,72,72) bfloat16 bits
    obj_ptr: np.ndarray  # (B,256) float32


@dataclass
class FrameFeatures:
    tracker: np.ndarray  # (1,256,72,72) tracker_features
    no_memory: np.ndarray  # (1,256,72,72) tracker_features + no_mem_embed
    image_pos: np.ndarray  # (1,256,72,72)
    feat_s0: np.ndarray  # (1,32,288,288)
    feat_s1: np.ndarray  # (1,64,144,144)


@dataclass
class FrameResult:
    index: int
    masks: np.ndarray  # (objects, H, W) bool at the frame's resolution
    object_score_logits: np.ndarray  # (objects,) float32


@dataclass
class TrackedObject:
    id: int


def model_points(prompt, size_hw) -> tuple[np.ndarray, np.ndarray]:
    """A click prompt (points_xy, labels, box_xyxy in pixels) -> (1,P,2) float32 on the 1008 grid and
    (1,P) int32 labels, the box first as corners labelled 2 and 3 (the ratio rounded to float32 first)."""
    height, width = size_hw
    xy, labels = [], []
    if prompt.box_xyxy is not None:
        x0, y0, x1, y1 = prompt.box_xyxy
        xy += [(x0 / width, y0 / height), (x1 / width, y1 / height)]
        labels += [2, 3]
    xy += [(x / width, y / height) for x, y in prompt.points_xy]
    labels += list(prompt.labels)
    return np.array([xy], np.float32) * np.float32(IMAGE_SIZE), np.array([labels], np.int32)


def check_prompt(prompt, size_hw) -> None:
    """Refuse a click prompt without a positive click or a box, points or a box outside the frame, and
    more points than the prompt encoder takes (also `toolkit.pipeline.video.ClickPrompt.check`)."""
    height, width = size_hw
    if 1 not in prompt.labels and prompt.box_xyxy is None:
        raise RuntimeInputError("a click prompt needs a positive point or a box")
    for x, y in prompt.points_xy:
        if not (0 <= x <= width and 0 <= y <= height):
            raise RuntimeInputError(f"point {x:g},{y:g} is outside the {width}x{height} frame (x,y in pixels)")
    if prompt.box_xyxy is not None:
        x0, y0, x1, y1 = prompt.box_xyxy
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise RuntimeInputError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is not a non-empty box inside the "
                                    f"{width}x{height} frame (x0,y0,x1,y1 in pixels)")
    points = len(prompt.points_xy) + (2 if prompt.box_xyxy is not None else 0)
    if points > MAX_PROMPT_POINTS:
        raise RuntimeInputError(f"{points} prompt points (a box counts as two); at most {MAX_PROMPT_POINTS}")


def memory_inputs(plan, features: Callable[[int], np.ndarray], pointer: Callable[[int], np.ndarray],
                  objects: int) -> dict[str, np.ndarray]:
    """The memory_attention component's memory feeds for a `MemoryPlan`: the planned memories stacked
    (M,B,64,72,72) float32 with their temporal slots, the object pointers (N,B,256) with their frame
    distances, and the distance scale. `features(frame)` / `pointer(frame)`: a banked frame's memory
    features and object pointer as float32 arrays (also used by `toolkit.pipeline.artifacts.RunnerTracker`)."""
    pointers = (np.stack([pointer(p.frame) for p in plan.pointers]) if plan.pointers
                else np.zeros((0, objects, 256), np.float32))
    return {"memory": np.stack([features(m.frame) for m in plan.spatial]),
            "memory_time_index": np.array([m.tpos_index for m in plan.spatial], np.int64),
            "object_pointers": pointers,
            "pointer_frame_distance": np.array([p.distance for p in plan.pointers], np.int64),
            "max_pointer_distance": np.array(plan.max_ptr_distance, np.int64)}


def _stable_single_mask(masks: np.ndarray, iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask 0 and its IoU, or the best of masks 1..3 where mask 0 is unstable (per object)."""
    best = iou[:, 1:].argmax(-1)
    rows = np.arange(masks.shape[0])
    single = masks[:, 0].reshape(masks.shape[0], -1)
    inner = (single > STABILITY_DELTA).sum(-1).astype(np.float32)
    outer = (single > -STABILITY_DELTA).sum(-1).astype(np.float32)
    stability = np.where(outer > 0, inner / np.maximum(outer, np.float32(1)), np.float32(1))
    stable = stability >= STABILITY_THRESH
    out_masks = np.where(stable[:, None, None, None], masks[:, 0:1], masks[rows, 1 + best][:, None])
    out_iou = np.where(stable[:, None], iou[:, 0:1], iou[rows, 1 + best][:, None])
    return out_masks, out_iou


def _non_overlapping(masks: np.ndarray) -> np.ndarray:
    """Where objects overlap only the highest logit stays; the others are clamped to <= -10."""
    if masks.shape[0] == 1:
        return masks
    winner = masks.argmax(0)[None] == np.arange(masks.shape[0])[:, None, None, None]
    return np.where(winner, masks, np.minimum(masks, np.float32(-10)))


@dataclass
class Session:
    tracker: Tracker
    frames: object
    prompt_frame: int
    objects: list[TrackedObject]
    bank: MemoryBank
    prompt_output: tuple[np.ndarray, np.ndarray]
    record: Record | None = None
    timings: list[float] = field(default_factory=list)

    def propagate(self) -> Iterator[FrameResult]:
        """The prompt frame, then the following frames, then the earlier ones."""
        n = self.prompt_frame
        order = [(t, False) for t in range(n, len(self.frames))] + [(t, True) for t in range(n - 1, -1, -1)]
        for t, reverse in order:
            yield self.tracker.propagate_frame(self, t, reverse)


class Tracker:
    """`toolkit track` (clicks / a box) from a bundle: `tracker.prompt(frames, frame, prompt).propagate()`.

    `frames`: anything with `len()`, `size_hw` and `rgb(i)` (H, W, 3) uint8; `prompt`: anything with
    `points_xy`, `labels` (1 positive, 0 negative) and `box_xyxy` (or None), in pixels.
    """

    is_pipeline = True  # `toolkit run` passes it to toolkit.api's segment / track as the whole pipeline

    def __init__(self, bundle: Bundle, threads: int | None = None, lean: bool = True):
        self.sessions = Sessions(bundle, threads, lean)
        missing = [n for n in TRACKER_COMPONENTS if n not in bundle.manifest["components"]]
        if missing:
            raise RuntimeInputError(f"bundle {bundle.root} lacks {', '.join(missing)} (a partial build?)")

    def encode_frame(self, rgb: np.ndarray, stage: str, record: Record | None) -> FrameFeatures:
        image = preprocess_frame(rgb)
        vision = self.sessions.run("vision_encoder", image=image)
        neck = self.sessions.run("tracker_neck", backbone_features=vision["backbone_features"])
        feats = FrameFeatures(neck["tracker_features"], neck["no_memory_features"], vision["image_pos"],
                              neck["feat_s0"], neck["feat_s1"])
        if record is not None:
            record(f"{stage}__00_frame_input", {"image": image})
            record(f"{stage}__01_image_features", {
                "out.vision_features": feats.tracker, "out.backbone_fpn.0": feats.feat_s0,
                "out.backbone_fpn.1": feats.feat_s1, "out.backbone_fpn.2": feats.tracker,
                "out.vision_pos_enc.2": feats.image_pos})
        return feats

    def sam_heads(self, pix: np.ndarray, feats: FrameFeatures, points: np.ndarray, labels: np.ndarray) -> dict:
        """Prompt encoder + mask decoder on (B,256,72,72), the mask choice, the object pointer."""
        run = self.sessions.run
        multimask = use_multimask(int((labels[0] >= 0).sum()))
        prompt = run("prompt_encoder", points=points, point_labels=labels)
        out = run("mask_decoder", image_embeddings=pix, sparse_embeddings=prompt["sparse_embeddings"],
                  dense_embeddings=prompt["dense_embeddings"], feat_s0=feats.feat_s0, feat_s1=feats.feat_s1)
        masks, iou, tokens, scores = out["masks"], out["iou"], out["mask_tokens"], out["object_score_logits"]
        rows = np.arange(masks.shape[0])
        if multimask:
            masks, iou, tokens = masks[:, 1:], iou[:, 1:], tokens[:, 1:]
        else:
            masks, iou = _stable_single_mask(masks, iou)
            tokens = tokens[:, 0:1]
        masks = np.where((scores > 0)[..., None, None], masks, np.float32(NO_OBJECT_SCORE))
        if multimask:
            best = iou.argmax(-1)
            low_res, token = masks[rows, best][:, None], tokens[rows, best]
        else:
            low_res, token = masks, tokens[:, 0]
        high_res = resize_bilinear(low_res, (IMAGE_SIZE, IMAGE_SIZE))
        pointer = run("object_pointer", sam_token=token, object_score_logits=scores)["object_pointer"]
        return {"low_res_masks": low_res, "high_res_masks": high_res, "ious": iou, "obj_ptr": pointer,
                "object_score_logits": scores}

    def encode_memory(self, feats: FrameFeatures, high_res: np.ndarray, scores: np.ndarray, from_prompt: bool,
                      stage: str, record: Record | None) -> np.ndarray:
        probability = (high_res > 0).astype(np.float32) if from_prompt else sigmoid(high_res).astype(np.float32)
        features = self.sessions.run("memory_encoder", image_features=feats.tracker, mask_probability=probability,
                                     object_score_logits=scores)["memory_features"]
        if record is not None:
            binarised = {"in.binarised_mask_logits": high_res} if from_prompt else {}
            record(f"{stage}__06_memory_encoder", {"out.vision_features": features, **binarised})
        return features

    @staticmethod
    def _track_step(heads: dict, quality: float) -> dict:
        return {"out.pred_masks": heads["low_res_masks"], "out.pred_masks_high_res": heads["high_res_masks"],
                "out.obj_ptr": heads["obj_ptr"], "out.object_score_logits": heads["object_score_logits"],
                "out.iou_score": heads["ious"].max(-1), "out.eff_iou_score": np.float32(quality)}

    def prompt(self, frames, frame: int, prompt, threshold: float = 0.5, record: Record | None = None) -> Session:
        """Prompt frame `frame` with clicks / a box (one object) and encode its memory (preflight)."""
        if isinstance(prompt, str):
            raise RuntimeInputError("tracking from a bundle takes clicks or a box; text prompts need the "
                                    "mask-prompt path, which no component exports")
        if not 0 <= frame < len(frames):
            raise RuntimeInputError(f"frame {frame} is out of range (0..{len(frames) - 1})")
        size_hw = tuple(frames.size_hw)
        check_prompt(prompt, size_hw)
        stage = f"f{frame}_prompt"
        feats = self.encode_frame(frames.rgb(frame), stage, record)
        points, labels = model_points(prompt, size_hw)
        heads = self.sam_heads(feats.no_memory, feats, points, labels)
        if record is not None:
            quality = frame_quality(heads["object_score_logits"].flatten().tolist(), heads["ious"].max(-1).tolist())
            record(f"{stage}__07_track_step", self._track_step(heads, quality))
        high_res = _non_overlapping(resize_bilinear(heads["low_res_masks"], (IMAGE_SIZE, IMAGE_SIZE)))
        features = self.encode_memory(feats, high_res, heads["object_score_logits"], True, "preflight", record)
        bank = MemoryBank(len(frames))
        bank.add_conditioning(frame, Memory(to_bfloat16(features), heads["obj_ptr"]))
        return Session(self, frames, frame, [TrackedObject(1)], bank,
                       (heads["low_res_masks"], heads["object_score_logits"]), record)

    def propagate_frame(self, session: Session, t: int, reverse: bool) -> FrameResult:
        bank, record, size_hw = session.bank, session.record, tuple(session.frames.size_hw)
        b = len(session.objects)
        if t == session.prompt_frame:
            return self._output(t, *session.prompt_output, size_hw, record)
        stage = f"f{t}_propagate"
        feats = self.encode_frame(session.frames.rgb(t), stage, record)
        plan = bank.plan(t, reverse)
        memory = memory_inputs(plan, lambda f: from_bfloat16(bank.payload(f).features),
                               lambda f: bank.payload(f).obj_ptr, b)
        conditioned = self.sessions.run("memory_attention", image_features=feats.tracker, image_pos=feats.image_pos,
                                        **memory)["conditioned_features"]
        if record is not None:  # sequence-first, as the reference's module returns it
            record(f"{stage}__05_memory_attention",
                   {"out.memory": conditioned.reshape(b, 256, -1).transpose(2, 0, 1)})
        no_click = np.zeros((b, 1, 2), np.float32), -np.ones((b, 1), np.int32)
        heads = self.sam_heads(conditioned, feats, *no_click)
        scores = heads["object_score_logits"]
        quality = frame_quality(scores.flatten().tolist(), heads["ious"].max(-1).tolist())
        features = self.encode_memory(feats, heads["high_res_masks"], scores, False, stage, record)
        if record is not None:
            record(f"{stage}__07_track_step", {**self._track_step(heads, quality), "out.maskmem_features": features})
        bank.add_tracked(t, Memory(to_bfloat16(features), heads["obj_ptr"]), quality)
        return self._output(t, heads["low_res_masks"], scores, size_hw, record)

    @staticmethod
    def _output(t: int, low_res: np.ndarray, scores: np.ndarray, size_hw, record: Record | None) -> FrameResult:
        video_res = resize_bilinear(low_res, size_hw)
        if record is not None:
            record(f"f{t}_final__09_final", {"out.low_res_masks": low_res, "out.video_res_masks": video_res,
                                             "out.obj_scores": scores})
        return FrameResult(t, video_res[:, 0] > 0, scores[:, 0].astype(np.float32))
