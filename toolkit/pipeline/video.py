"""Video path: frame sources and the tracker that follows prompted objects through the frames.

Flow (upstream `Sam3TrackerPredictor`: `add_new_points_or_box` / `add_new_mask`, then
`propagate_in_video` with preflight, with the EfficientSAM3 tracker configuration):

1. prompt frame N: clicks or a box go through the SAM heads on the frame's own features plus
   the no-memory embedding; a text prompt runs the detector on frame N, and each detected mask
   becomes a mask prompt (one object each, all tracked together as one batch);
2. preflight: the prompted masks are encoded into the memory bank as conditioning memories;
3. propagation: frames N+1 .. last, then N-1 .. 0; each frame's features attend to the memories
   chosen by `MemoryBank.plan`, the SAM heads predict the masks, and the memory encoder stores
   the frame for later ones.

Only the stage methods of the neural modules (`toolkit.pipeline.stages`) and the memory-bank rules
are used, so the same loop drives component runners (`toolkit.pipeline.artifacts.RunnerTracker`).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ToolkitError
from ..files.images import image_size_hw, load_rgb
from ..model.detector import detections
from ..model.recording import Recorder, recording_output, stage_tensors
from ..model.tracker import memory_mask_probability
from ..model.vision import VisionBackbone
from ..runtime.errors import RuntimeInputError
from ..runtime.video import check_prompt, model_points
from .memory_bank import MemoryBank, MemoryPlan, frame_quality, use_multimask
from .preprocess import IMAGE_SIZE, preprocess_frame
from .stages import DetectorStages, TrackerStages
from .tokenizer import Tokenizer

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Decoded video frames are held in memory; longer videos should be extracted to a folder first.
MAX_VIDEO_BYTES = 4 * 2**30
LOW_RES = 288  # SAM mask logits grid
# Text prompts: detections above the score threshold, de-duplicated by mask NMS (upstream's
# video model: det_nms_thresh=0.1 on the binarised 288x288 masks).
NMS_MASK_IOU = 0.1
# Mask prompts become logits of -10 / +10 (upstream `_use_mask_as_output`).
MASK_LOGIT_SCALE, MASK_LOGIT_BIAS = 20.0, -10.0


# --- frame sources ---------------------------------------------------------------------------

def natural_key(name: str) -> list:
    """'frame10.png' sorts after 'frame9.png'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class Frames:
    """A sequence of same-size RGB frames: `len`, `size_hw`, `names`, `rgb(i)`."""

    path: Path
    names: list[str]
    size_hw: tuple[int, int]
    fps: float | None = None

    def __len__(self) -> int:
        return len(self.names)

    def rgb(self, index: int) -> np.ndarray:
        raise NotImplementedError


class ImageFolder(Frames):
    """Every image file of a folder, in natural order of the file names."""

    def __init__(self, path: Path):
        self.path = path
        self.files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                            key=lambda p: natural_key(p.name))
        if not self.files:
            raise ToolkitError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {path}")
        self.names = [p.name for p in self.files]
        # the upright sizes `load_rgb` will give (EXIF orientation), every frame checked before any work
        sizes = {p.name: image_size_hw(p) for p in self.files}
        self.size_hw = sizes[self.names[0]]
        odd = next((n for n in self.names if sizes[n] != self.size_hw), None)
        if odd is not None:
            h, w = sizes[odd]
            raise ToolkitError(f"frame {odd} is {w}x{h} but {self.names[0]} is "
                               f"{self.size_hw[1]}x{self.size_hw[0]}; all frames must have one size")

    def rgb(self, index: int) -> np.ndarray:
        return load_rgb(self.files[index])


class VideoFile(Frames):
    """All frames of a video file, decoded once with PyAV (package `av`) and kept in memory."""

    def __init__(self, path: Path):
        try:
            import av
        except ImportError as err:
            raise ToolkitError(f"reading the video {path} needs the package 'av' (pip install av); "
                               "or pass a folder of frames") from err
        self.path = path
        self.frames: list[np.ndarray] = []
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ToolkitError(f"cannot read video {path}: it has no video stream")
                stream = container.streams.video[0]
                self.fps = float(stream.average_rate) if stream.average_rate else None
                size = 0
                for frame in container.decode(stream):
                    self.frames.append(frame.to_ndarray(format="rgb24"))
                    size += self.frames[-1].nbytes
                    if size > MAX_VIDEO_BYTES:
                        raise ToolkitError(f"video {path} needs more than {MAX_VIDEO_BYTES / 2**30:.0f} GiB "
                                           "decoded; extract its frames to a folder and pass the folder")
        except av.FFmpegError as err:
            raise ToolkitError(f"cannot read video {path}: {err.strerror or err}") from err
        if not self.frames:
            raise ToolkitError(f"cannot read video {path}: no frames decoded")
        self.names = [f"{i:05d}" for i in range(len(self.frames))]
        self.size_hw = self.frames[0].shape[:2]

    def rgb(self, index: int) -> np.ndarray:
        return self.frames[index]


def open_frames(path: str | Path) -> Frames:
    """A folder of images, or a video file."""
    path = Path(path)
    if path.is_dir():
        return ImageFolder(path)
    if not path.is_file():
        raise ToolkitError(f"--frames {path} does not exist (expected a folder of images or a video file)")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise ToolkitError(f"--frames {path} is a single image; pass the folder that holds the frames")
    return VideoFile(path)


def check_frame_index(frames: Frames, frame: int) -> None:
    if not 0 <= frame < len(frames):
        raise ToolkitError(f"--frame {frame} is out of range: {frames.path} has {len(frames)} frames "
                           f"(0..{len(frames) - 1})")


# --- prompts ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClickPrompt:
    """Clicks (label 1 positive, 0 negative) and/or one box, in pixels of the original frames."""

    points_xy: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box_xyxy: tuple[float, float, float, float] | None = None

    def check(self, size_hw: tuple[int, int]) -> None:
        """The runtime's check (one definition: the runtime imports no torch)."""
        try:
            check_prompt(self, size_hw)
        except RuntimeInputError as e:
            raise ToolkitError(str(e)) from e

    def model_points(self, size_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(1,P,2) float32 (x, y) on the 1008 model grid and (1,P) int32 labels; the box first as
        two corners labelled 2 and 3 (upstream's order).

        Pixels map as upstream's relative coordinates do: (x / width) * 1008, the ratio rounded
        to float32 first, so that a click at pixel (312, 180) of a 600x400 frame equals the
        relative click (0.52, 0.45).
        """
        points, labels = model_points(self, size_hw)  # the runtime's (one definition)
        return torch.from_numpy(points), torch.from_numpy(labels)


# --- results ---------------------------------------------------------------------------------

@dataclass
class TrackedObject:
    id: int
    detection_score: float | None = None  # text prompts: the detector's score on the prompt frame
    box_xyxy_px: tuple[float, ...] | None = None  # text prompts: the detector's box


@dataclass
class FrameResult:
    index: int
    masks: np.ndarray  # (objects, H, W) bool at the frame's resolution
    object_score_logits: np.ndarray  # (objects,) float32; > 0: predicted present


@dataclass
class Memory:
    """What the bank stores per frame for all objects tracked together (batch B): about 0.65 MB
    per frame and object. (The memory position encoding is the same for every frame: the
    session keeps one copy.)"""

    features: Tensor  # (B,64,72,72) bfloat16, as upstream stores it
    obj_ptr: Tensor  # (B,256)


@dataclass
class FrameFeatures:
    vision: Tensor  # (1,256,72,72) top level
    vision_pos: Tensor  # (1,256,72,72)
    feat_s0: Tensor  # (1,32,288,288)
    feat_s1: Tensor  # (1,64,144,144)

    def batch(self, b: int) -> FrameFeatures:
        return FrameFeatures(*(t.expand(b, *t.shape[1:]) for t in
                               (self.vision, self.vision_pos, self.feat_s0, self.feat_s1)))


def _seq(x: Tensor) -> Tensor:
    """(B,C,H,W) -> (HW,B,C)."""
    return x.flatten(2).permute(2, 0, 1)


def _non_overlapping(masks: Tensor) -> Tensor:
    """Where objects overlap, only the highest logit stays; the others are clamped to <= -10."""
    if masks.shape[0] == 1:
        return masks
    winner = masks.argmax(dim=0, keepdim=True) == torch.arange(masks.shape[0])[:, None, None, None]
    return torch.where(winner, masks, masks.clamp(max=-10.0))


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_MASK_IOU) -> np.ndarray:
    """Indices (ascending) kept by greedy NMS on the mask IoU of bool masks (N, h, w)."""
    flat = masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:]))).astype(np.float32)
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1)
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        kept.append(order[0])
        order = order[1:][iou[order[0], order[1:]] <= iou_threshold]
    return np.sort(np.array(kept, dtype=np.int64))


# --- the tracker -----------------------------------------------------------------------------

@dataclass
class TrackingSession:
    """One prompted group of objects: its memory bank and the frames left to propagate through."""

    tracker: VideoTracker
    frames: Frames
    prompt_frame: int
    objects: list[TrackedObject]
    bank: MemoryBank[Memory]
    memory_pos: Tensor | None = None  # (B,64,72,72) position encoding of every spatial memory
    prompt_output: tuple[Tensor, Tensor] | None = None  # prompt frame: low-res logits, object scores
    record: Recorder | None = None

    def propagate(self) -> Iterator[FrameResult]:
        """Frame results: the prompt frame, then the following frames, then the earlier ones."""
        n = self.prompt_frame
        order = [(t, False) for t in range(n, len(self.frames))] + [(t, True) for t in range(n - 1, -1, -1)]
        for t, reverse in order:
            yield self.tracker.propagate_frame(self, t, reverse)


class VideoTracker:
    """Prompt objects on one frame and follow them through all frames.

    `backbone` is the vision backbone shared with the detector (None for a subclass that encodes
    frames itself: `toolkit.pipeline.artifacts.RunnerTracker`); `tracker` runs the tracker stages
    (`TrackerModules` or a stand-in); `detector` (and a tokenizer) are needed only for text prompts.
    """

    def __init__(self, backbone: VisionBackbone | None, tracker: TrackerStages, detector: DetectorStages | None = None,
                 tokenizer: Tokenizer | None = None):
        self.backbone = backbone.eval() if backbone is not None else None
        self.tracker = tracker.eval()
        self.detector = detector.eval() if detector is not None else None
        self.tokenizer = tokenizer or (Tokenizer() if detector is not None else None)

    # --- per-frame pieces ---------------------------------------------------------------------
    def encode_frame(self, rgb: np.ndarray, stage: str, record: Recorder | None,
                     with_detector: bool = False) -> tuple[FrameFeatures, dict | None]:
        """Frame -> tracker features (and, `with_detector`, the detector's features of the same trunk pass)."""
        image = preprocess_frame(rgb)
        if record is not None:
            record(f"{stage}__00_frame_input", {"image": image})
        det_features = None
        if with_detector:
            det_features, features = self.backbone.forward_dual(image)
        else:
            features = self.backbone.tracker_features(self.backbone.trunk(image))
        fpn, pos = features["backbone_fpn"], features["vision_pos_enc"]
        feat_s0, feat_s1 = self.tracker.high_res_features(fpn[0], fpn[1])
        if record is not None:
            record(f"{stage}__01_image_features", {
                "out.vision_features": fpn[2], "out.backbone_fpn.0": feat_s0, "out.backbone_fpn.1": feat_s1,
                "out.backbone_fpn.2": fpn[2], **{f"out.vision_pos_enc.{i}": p for i, p in enumerate(pos)},
            })
        return FrameFeatures(fpn[2], pos[2], feat_s0, feat_s1), det_features

    @contextmanager
    def _recording_sam_heads(self, stage: str, record: Recorder | None):
        """Record the prompt encoder, mask decoder and object-pointer projection as `stage`'s 02-04."""
        trk = self.tracker
        with ExitStack() as stack:
            for module, part, name in (
                (trk.sam_prompt_encoder, "02_sam_prompt_encoder", stage_tensors),
                (trk.sam_mask_decoder, "03_sam_mask_decoder", stage_tensors),
                (trk.obj_ptr_proj, "04_obj_ptr_proj", lambda out: {"out": out}),
            ):
                stack.enter_context(recording_output(module, record, f"{stage}__{part}", name))
            yield

    def sam_heads(self, pix_feat: Tensor, feats: FrameFeatures, points: Tensor, labels: Tensor,
                  stage: str, record: Recorder | None) -> dict[str, Tensor]:
        """SAM decode of batch B; multimask choice by the number of prompt points."""
        trk = self.tracker
        with self._recording_sam_heads(stage, record):
            valid = int((labels[0] >= 0).sum())
            return trk.sam_heads(pix_feat, feats.feat_s0, feats.feat_s1, points, labels,
                                 multimask_output=use_multimask(valid))

    def mask_as_output(self, feats: FrameFeatures, masks: Tensor, stage: str,
                       record: Recorder | None) -> dict[str, Tensor]:
        """Mask prompts (B,1,1008,1008) bool -> the frame's outputs (upstream `_use_mask_as_output`).

        The mask itself is the output (logits -10 / +10); the SAM decoder, given the mask as a
        dense prompt on the frame's own features, only provides the object pointer.
        """
        trk, b = self.tracker, masks.shape[0]
        mask = masks.float()
        high_res = mask * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        low_res = F.interpolate(high_res, size=(LOW_RES, LOW_RES), mode="bilinear", align_corners=False,
                                antialias=True)
        dense_prompt = F.interpolate(trk.mask_downsample(mask), size=(LOW_RES, LOW_RES), mode="bilinear",
                                     align_corners=False, antialias=True)
        no_click = torch.zeros(b, 1, 2), -torch.ones(b, 1, dtype=torch.int32)
        with self._recording_sam_heads(stage, record):
            sparse, dense = trk.sam_prompt_encoder(*no_click, mask=dense_prompt)
            _, _, tokens, decoder_score = trk.sam_mask_decoder(
                feats.vision, trk.sam_prompt_encoder.dense_pe(), sparse, dense, feats.feat_s0, feats.feat_s1, False)
            decoder_ptr = trk.object_pointer(tokens[:, 0], decoder_score)
        present = masks.flatten(1).any(dim=1, keepdim=True).float()  # (B,1)
        return {
            "low_res_masks": low_res, "high_res_masks": high_res, "ious": torch.ones(b, 1),
            "obj_ptr": present * decoder_ptr + (1 - present) * trk.no_obj_ptr,
            "object_score_logits": MASK_LOGIT_SCALE * present + MASK_LOGIT_BIAS,
        }

    def memory_inputs(self, plan: MemoryPlan, bank: MemoryBank[Memory], pos: Tensor) -> tuple[Tensor, ...]:
        """Planned memories + the memory position encoding `pos` (B,64,72,72) ->
        (memory, memory_pos, pointer tokens, pointer pos), sequence-first."""
        trk = self.tracker
        memory = torch.cat([_seq(bank.payload(m.frame).features.float()) for m in plan.spatial])
        memory_pos = torch.cat([_seq(pos) + trk.maskmem_tpos_enc[m.tpos_index] for m in plan.spatial])
        ptrs = torch.stack([bank.payload(p.frame).obj_ptr for p in plan.pointers])
        distances = torch.tensor([p.distance for p in plan.pointers])
        tokens, tokens_pos = trk.pointer_tokens(ptrs, distances, plan.max_ptr_distance)
        return memory, memory_pos, tokens, tokens_pos

    def encode_memory(self, feats: FrameFeatures, high_res: Tensor, object_score_logits: Tensor,
                      from_prompt: bool, stage: str, record: Recorder | None) -> tuple[Tensor, Tensor]:
        probability = memory_mask_probability(high_res, from_prompt)

        def names(out):
            # A clicked frame's mask is binarised: the logits it was cut from let a comparison tell
            # which memory values a pixel flipped by float rounding near 0 may have changed.
            binarised = {"in.binarised_mask_logits": high_res} if from_prompt else {}
            return {"out.vision_features": out[0], "out.vision_pos_enc.0": out[1], **binarised}
        with recording_output(self.tracker.maskmem_backbone, record, f"{stage}__06_memory_encoder", names):
            return self.tracker.encode_memory(feats.batch(high_res.shape[0]).vision, probability,
                                              object_score_logits)

    @staticmethod
    def _track_step_record(heads: dict[str, Tensor], quality: float) -> dict:
        return {
            "out.pred_masks": heads["low_res_masks"], "out.pred_masks_high_res": heads["high_res_masks"],
            "out.obj_ptr": heads["obj_ptr"], "out.object_score_logits": heads["object_score_logits"],
            "out.iou_score": heads["ious"].max(-1).values, "out.eff_iou_score": np.float32(quality),
        }

    # --- prompt + preflight -------------------------------------------------------------------
    @torch.inference_mode()
    def prompt(self, frames: Frames, frame: int, prompt: ClickPrompt | str, threshold: float = 0.5,
               record: Recorder | None = None) -> TrackingSession:
        """Prompt frame `frame` with clicks / a box (one object) or a text (every detected object),
        and encode the prompted masks as conditioning memories (upstream's preflight)."""
        check_frame_index(frames, frame)
        size_hw = frames.size_hw
        stage = f"f{frame}_prompt"
        bank: MemoryBank[Memory] = MemoryBank(len(frames))
        rgb = frames.rgb(frame)
        if isinstance(prompt, ClickPrompt):
            prompt.check(size_hw)
            feats, _ = self.encode_frame(rgb, stage, record)
            points, labels = prompt.model_points(size_hw)
            pix = self.tracker.no_memory_features(_seq(feats.vision))
            heads = self.sam_heads(pix, feats, points, labels, stage, record)
            objects = [TrackedObject(1)]
            low_res = heads["low_res_masks"]
            if record is not None:
                quality = frame_quality(heads["object_score_logits"].flatten().tolist(),
                                        heads["ious"].max(-1).values.tolist())
                record(f"{stage}__07_track_step", self._track_step_record(heads, quality))
                # What upstream's add_new_points_or_box returns: the mask at the video resolution.
                record(f"{stage}__08_add_points_return", {"out.1": F.interpolate(
                    low_res, size=size_hw, mode="bilinear", align_corners=False)})
        else:
            if self.detector is None:
                raise ValueError("text prompts need the detector")
            feats, det_features = self.encode_frame(rgb, stage, record, with_detector=True)
            det_record = (lambda name, tensors: record(f"f{frame}_detect__{name}", tensors)) if record else None
            objects, masks = self._detect(det_features, prompt, size_hw, threshold, det_record)
            if not objects:
                return TrackingSession(self, frames, frame, [], bank, record=record)
            heads = self.mask_as_output(feats.batch(len(objects)), masks, stage, record)
            if record is not None:
                quality = frame_quality(heads["object_score_logits"].flatten().tolist(), [1.0] * len(objects))
                record(f"{stage}__07_track_step", self._track_step_record(heads, quality))
            # Upstream keeps the mask at the video resolution as +-1024 logits, and the memory is
            # encoded from that mask brought back to the 288 grid.
            video_res = F.interpolate(masks.float(), size=size_hw, mode="bilinear", align_corners=False,
                                      antialias=True) > 0.5
            video_logits = torch.where(video_res, 1024.0, -1024.0)
            low_res = F.interpolate(video_logits, size=(LOW_RES, LOW_RES), mode="bilinear", align_corners=False,
                                    antialias=True)

        high_res = _non_overlapping(F.interpolate(low_res, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                                  align_corners=False))
        features, pos = self.encode_memory(feats, high_res, heads["object_score_logits"], True, "preflight",
                                           record)
        bank.add_conditioning(frame, Memory(features.to(torch.bfloat16), heads["obj_ptr"]))
        return TrackingSession(self, frames, frame, objects, bank, pos, (low_res, heads["object_score_logits"]),
                               record)

    def _detect(self, det_features: dict, text: str, size_hw: tuple[int, int], threshold: float,
                record: Recorder | None) -> tuple[list[TrackedObject], Tensor]:
        """Detections on the prompt frame above `threshold`, de-duplicated by mask NMS -> objects
        (query order) and their masks (N,1,1008,1008) bool: the 288x288 logits resized, > 0."""
        encoded = self.detector.encode_text(self.tokenizer(text), record)
        grounding = self.detector.forward_grounding(det_features, encoded, record=record)
        found = detections(grounding, size_hw, threshold, record)
        if not len(found["scores"]):
            return [], torch.zeros(0, 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
        logits = grounding["pred_masks"][0, found["query_indices"]]  # (N,288,288)
        keep = mask_nms((logits > 0).numpy(), found["scores"])
        objects = [TrackedObject(i + 1, float(found["scores"][k]), tuple(float(v) for v in found["boxes_xyxy_px"][k]))
                   for i, k in enumerate(keep)]
        masks = F.interpolate(logits[keep][:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                              align_corners=False) > 0
        return objects, masks

    # --- propagation --------------------------------------------------------------------------
    @torch.inference_mode()
    def propagate_frame(self, session: TrackingSession, t: int, reverse: bool) -> FrameResult:
        """Track frame `t` (or return the prompt frame's result) and store it in the bank."""
        bank, record, size_hw = session.bank, session.record, session.frames.size_hw
        b = len(session.objects)
        if b == 0:
            return FrameResult(t, np.zeros((0, *size_hw), bool), np.zeros(0, np.float32))
        if t == session.prompt_frame:
            return self._output(t, *session.prompt_output, size_hw, record)

        stage = f"f{t}_propagate"
        feats, _ = self.encode_frame(session.frames.rgb(t), stage, record)
        batch = feats.batch(b)
        current, current_pos = _seq(batch.vision), _seq(batch.vision_pos)
        plan = bank.plan(t, reverse)
        names = lambda out: {"out.memory": out, "out.pos_embed": current_pos}
        with recording_output(self.tracker.transformer["encoder"], record, f"{stage}__05_memory_attention", names):
            pix = self.tracker.condition_on_memory(current, current_pos,
                                                   *self.memory_inputs(plan, bank, session.memory_pos))
        no_click = torch.zeros(b, 1, 2), -torch.ones(b, 1, dtype=torch.int32)
        heads = self.sam_heads(pix, batch, *no_click, stage, record)
        scores = heads["object_score_logits"]
        quality = frame_quality(scores.flatten().tolist(), heads["ious"].max(-1).values.tolist())
        features, pos = self.encode_memory(feats, heads["high_res_masks"], scores, False, stage, record)
        if record is not None:
            record(f"{stage}__07_track_step", {**self._track_step_record(heads, quality),
                                                "out.maskmem_features": features, "out.maskmem_pos_enc.0": pos})
        bank.add_tracked(t, Memory(features.to(torch.bfloat16), heads["obj_ptr"]), quality)
        return self._output(t, heads["low_res_masks"], scores, size_hw, record)

    @staticmethod
    def _output(t: int, low_res: Tensor, scores: Tensor, size_hw: tuple[int, int],
                record: Recorder | None) -> FrameResult:
        """Low-res logits -> masks at the frame's resolution (upstream propagate_in_video's yield)."""
        video_res = F.interpolate(low_res, size=size_hw, mode="bilinear", align_corners=False)
        if record is not None:
            record(f"f{t}_final__09_final", {"out.low_res_masks": low_res, "out.video_res_masks": video_res,
                                             "out.obj_scores": scores})
        return FrameResult(t, (video_res[:, 0] > 0).numpy(), scores[:, 0].numpy().astype(np.float32))
