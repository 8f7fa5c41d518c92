"""The PyTorch pipelines over artifacts: component runners in place of the model's stage methods.

Running a bundle on a device is `toolkit.runtime`'s job (numpy + ONNX Runtime, no PyTorch). This
module drives the reference's own pipeline code (pre-processing, prompt assembly, memory bank,
post-processing of `toolkit segment` / `toolkit track`) with artifact runners instead, where a
stage-by-stage comparison with the reference is the point: the bench scenarios on every runner
kind, the calibration feeds of quantization, the export tests against the golden fixture.

`artifact_runner` turns an artifact into a `Runner` through its format's backend, converting at
the boundary where the artifact's tensor types differ from the declaration (`ArtifactRunner`).

- `RunnerDetector` provides `encode_image`, `encode_text`, `forward_grounding` for
  `ImageSegmenter` (the detector chain is `toolkit.components.registry.ground`);
- `RunnerTracker` is a `VideoTracker` whose frame encoding and memory-attention inputs come from
  the runners, with `RunnerTrackerModules` in place of `TrackerModules` (both satisfy
  `toolkit.pipeline.stages.TrackerStages`): the SAM heads and the decoder's mask choice are the
  functions the reference's modules call too (`decode_sam_heads`, `select_outputs`), run over the
  prompt-encoder / mask-decoder / object-pointer runners; the memory-attention feeds are the
  runtime's (`toolkit.runtime.video.memory_inputs`).

Boundaries that differ from the reference's method boundaries, and how they are bridged: the
memory_encoder component takes the 1008x1008 mask probability the pipeline computes (the
binarisation of a clicked frame's mask stays outside every graph). The memory_attention component
takes the bank's raw memories with their slot indices and computes the position encodings inside,
so `memory_inputs` returns those (the runtime's feeds). Text prompts for tracking use the mask-prompt path
(`mask_downsample`), which no component exports: runners track clicks and boxes.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..backends import BACKENDS
from ..components.registry import ground
from ..deploy.bundle import BundleError
from ..errors import ToolkitError
from ..model.detector import Recorder
from ..model.position import PositionEmbeddingSine
from ..model.tracker.mask_decoder import select_outputs
from ..model.tracker.memory_encoder import MEM_DIM
from ..model.tracker.tracker import decode_sam_heads
from ..runners import Runner
from ..runtime.video import memory_inputs
from .memory_bank import MemoryBank, MemoryPlan
from .preprocess import preprocess_frame
from .video import FrameFeatures, Memory, VideoTracker

DETECTOR_COMPONENTS = ("vision_encoder", "text_encoder", "geometry_encoder", "fusion_encoder", "fusion_decoder",
                       "scoring", "segmentation_head")
TRACKER_COMPONENTS = ("vision_encoder", "tracker_neck", "prompt_encoder", "mask_decoder", "object_pointer",
                      "memory_encoder", "memory_attention")


# --- runners over artifacts ---------------------------------------------------------------------

class ArtifactRunner(Runner):
    """An artifact runner speaking the declaration's tensor types: feeds are converted to the
    artifact's dtypes / shapes (int32 for bool and int64, (1,) for a scalar), outputs back."""

    def __init__(self, inner: Runner, inputs: list[dict], outputs: list[dict]):
        super().__init__([e["name"] for e in inputs], [e["name"] for e in outputs])
        self.inner, self.inputs, self.outputs = inner, inputs, outputs
        self.name = inner.name

    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        converted = {}
        for e in self.inputs:
            x = np.asarray(feeds[e["name"]]).astype(e["artifact_dtype"], copy=False)
            converted[e["name"]] = x.reshape(1) if not e["shape"] and e["artifact_shape"] == [1] else x
        got = self.inner.infer(converted)
        out = []
        for e in self.outputs:
            y = np.asarray(got[e["name"]])
            y = y != 0 if e["dtype"] == "bool" and y.dtype != bool else y.astype(e["dtype"], copy=False)
            out.append(y.reshape(()) if not e["shape"] else y)
        return out


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def artifact_runner(fmt: str, path: Path, inputs: list[dict], outputs: list[dict],
                    threads: int | None = None) -> Runner:
    """A runner over one artifact; BundleError (one line) when the file does not load as `fmt` or
    its tensor names differ from the manifest entry's."""
    backend = BACKENDS[fmt]
    reason = backend.unavailable()
    if reason:
        raise ToolkitError(f"cannot run {path.name} here: {reason}")
    try:
        inner = backend.runner(path, threads=threads)
    except Exception as e:  # noqa: BLE001 - each runtime raises its own types for a file it cannot load
        raise BundleError(f"{path.name} does not load as an artifact of format {fmt}: {type(e).__name__}: "
                          f"{_one_line(e)}") from e
    for kind, have, want in (("inputs", inner.input_names, inputs), ("outputs", inner.output_names, outputs)):
        if sorted(have) != sorted(e["name"] for e in want):
            raise BundleError(f"{path.name} has {kind} {sorted(have)}, the manifest lists "
                              f"{sorted(e['name'] for e in want)}")
    return ArtifactRunner(inner, inputs, outputs)


# --- the image pipeline's detector ------------------------------------------------------------------

def _torch(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


class RunnerDetector:
    """The Detector stage methods `ImageSegmenter` calls, served by component runners.

    Prompt assembly follows the component boundaries (text tokens ++ geometry tokens with the CLS
    token); `record` receives the stages whose tensors the components give, under the golden
    manifest's names, so a bundle's stage dump compares with the reference's.
    """

    def __init__(self, runners: Mapping[str, Runner]):
        self.runners = runners

    def eval(self) -> RunnerDetector:
        return self

    def _run(self, name: str, **feeds) -> dict[str, np.ndarray]:
        return self.runners[name].infer({k: np.asarray(v) for k, v in feeds.items()})

    def encode_image(self, image: Tensor, record: Recorder | None = None) -> dict[str, np.ndarray]:
        out = self._run("vision_encoder", image=image.numpy())
        if record is not None:
            record("00_preprocess", {"image": image})
            record("02_trunk_with_head", {"out.0": out["backbone_features"]})
            record("03_neck", {"out.vision_features": out["fpn_72"], "out.vision_pos_enc.2": out["image_pos"],
                               **{f"out.backbone_fpn.{i}": out[f"fpn_{s}"] for i, s in enumerate((288, 144, 72))}})
        return out

    def encode_text(self, token_ids: Tensor, record: Recorder | None = None) -> dict[str, np.ndarray]:
        out = self._run("text_encoder", token_ids=token_ids.numpy())
        if record is not None:
            record("04_tokenizer", {"ids": token_ids})
            record("05d_forward_text", {"out.language_features": out["text_features"],
                                        "out.language_mask": out["text_mask"]})
        return out

    def forward_grounding(self, features, text, boxes=None, box_labels=None, record: Recorder | None = None) -> dict:
        out = ground(self._run, features, text, boxes, box_labels)
        grounding = {"encoder_hidden_states": out["memory"], "queries": out["queries"],
                     "presence_logit_dec": out["presence_logit"], "pred_logits": out["pred_logits"],
                     "pred_boxes": out["pred_boxes"], "pred_masks": out["pred_masks"],
                     "semantic_seg": out["semantic_seg"]}
        if record is not None:
            record("06_geometry_encoder", {"out.0": out["geometry_tokens"], "out.1": out["geometry_mask"]})
            record("07_fusion_encoder", {"out.memory": out["memory"]})
            record("11_grounding_out", {f"out.{k}": v for k, v in grounding.items()})
        return {k: _torch(v) for k, v in grounding.items()}


# --- the video pipeline's tracker ---------------------------------------------------------------------

class _PromptEncoder(nn.Module):
    """prompt_encoder runner as the SAM prompt encoder (the dense PE lives inside mask_decoder)."""

    def __init__(self, runner: Runner):
        super().__init__()
        self.runner = runner

    def forward(self, points: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        out = self.runner.infer({"points": points.numpy(), "point_labels": labels.numpy()})
        return _torch(out["sparse_embeddings"]), _torch(out["dense_embeddings"])

    def dense_pe(self) -> None:
        return None


class _MaskDecoder(nn.Module):
    """mask_decoder runner (all four tokens) under the reference's choice of the output mask."""

    def __init__(self, runner: Runner):
        super().__init__()
        self.runner = runner

    def forward(self, image_embeddings: Tensor, _image_pe: None, sparse: Tensor, dense: Tensor, feat_s0: Tensor,
                feat_s1: Tensor, multimask_output: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.runner.infer({"image_embeddings": image_embeddings.numpy(), "sparse_embeddings": sparse.numpy(),
                                 "dense_embeddings": dense.numpy(), "feat_s0": feat_s0[:1].numpy(),
                                 "feat_s1": feat_s1[:1].numpy()})
        return select_outputs(*(_torch(out[n]) for n in ("masks", "iou", "mask_tokens", "object_score_logits")),
                              multimask_output)


class _MemoryAttention(nn.Module):
    """memory_attention runner; sequence-first in and out like the reference's module."""

    def __init__(self, runner: Runner):
        super().__init__()
        self.runner = runner

    def forward(self, current: Tensor, current_pos: Tensor, memory: Mapping[str, np.ndarray]) -> Tensor:
        """`memory`: the runtime's memory feeds (`RunnerTracker.memory_inputs`)."""
        def grid(seq: Tensor) -> np.ndarray:  # (5184,B,256) -> (1,256,72,72): the frame is the same for all objects
            return seq[:, :1].permute(1, 2, 0).reshape(1, -1, 72, 72).numpy()
        out = self.runner.infer({"image_features": grid(current), "image_pos": grid(current_pos), **memory})
        return _torch(out["conditioned_features"]).flatten(2).permute(2, 0, 1)


class RunnerTrackerModules(nn.Module):
    """What `VideoTracker` calls on `TrackerModules` (`TrackerStages`), served by the tracker's component runners."""

    def __init__(self, runners: Mapping[str, Runner]):
        super().__init__()
        self.runners = runners
        self.sam_prompt_encoder = _PromptEncoder(runners["prompt_encoder"])
        self.sam_mask_decoder = _MaskDecoder(runners["mask_decoder"])
        self.transformer = nn.ModuleDict({"encoder": _MemoryAttention(runners["memory_attention"])})
        # Not recorded from a bundle: object_pointer and memory_encoder fuse the projection /
        # the memory encoder with the absent-object terms, so their raw outputs do not exist.
        self.obj_ptr_proj = nn.Identity()
        self.maskmem_backbone = nn.Identity()
        self.memory_pos = PositionEmbeddingSine(MEM_DIM)  # weightless: the memory encoder's position encoding
        self.no_memory = None  # no_memory_features of the last encoded frame (tracker_neck output)

    def sam_heads(self, pix_feat: Tensor, feat_s0: Tensor, feat_s1: Tensor, points: Tensor,
                  labels: Tensor, multimask_output: bool) -> dict[str, Tensor]:
        return decode_sam_heads(self, pix_feat, feat_s0, feat_s1, points, labels, multimask_output)

    def object_pointer(self, sam_token: Tensor, object_score_logits: Tensor) -> Tensor:
        out = self.runners["object_pointer"].infer({"sam_token": sam_token.numpy(),
                                                     "object_score_logits": object_score_logits.numpy()})
        return _torch(out["object_pointer"])

    def no_memory_features(self, current: Tensor) -> Tensor:
        return self.no_memory.expand(current.shape[1], -1, -1, -1)

    def encode_memory(self, pix_feat: Tensor, mask_probability: Tensor,
                      object_score_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Memory features and their position encoding (memory_attention computes the latter itself;
        it is returned for the stage dumps)."""
        out = self.runners["memory_encoder"].infer({
            "image_features": pix_feat[:1].numpy(), "mask_probability": mask_probability.numpy(),
            "object_score_logits": object_score_logits.numpy()})
        features = _torch(out["memory_features"])
        return features, self.memory_pos(features)

    def condition_on_memory(self, current: Tensor, current_pos: Tensor, *memory_inputs) -> Tensor:
        """`memory_inputs`: the one mapping of memory feeds `RunnerTracker.memory_inputs` gives."""
        out = self.transformer["encoder"](current, current_pos, *memory_inputs)
        return out.permute(1, 2, 0).reshape(out.shape[1], -1, 72, 72)


class RunnerTracker(VideoTracker):
    """`VideoTracker` over a bundle's tracker components (click and box prompts)."""

    def __init__(self, runners: Mapping[str, Runner]):
        super().__init__(None, RunnerTrackerModules(runners))
        self.runners = runners

    def encode_frame(self, rgb: np.ndarray, stage: str, record: Recorder | None,
                     with_detector: bool = False) -> tuple[FrameFeatures, None]:
        if with_detector:
            raise ToolkitError("tracking from a bundle takes clicks or a box; text prompts need the mask-prompt "
                               "path, which no component exports")
        image = preprocess_frame(rgb)
        vision = self.runners["vision_encoder"].infer({"image": image.numpy()})
        neck = self.runners["tracker_neck"].infer({"backbone_features": vision["backbone_features"]})
        feats = FrameFeatures(*(_torch(x) for x in (neck["tracker_features"], vision["image_pos"], neck["feat_s0"],
                                                    neck["feat_s1"])))
        self.tracker.no_memory = _torch(neck["no_memory_features"])
        if record is not None:
            record(f"{stage}__00_frame_input", {"image": image})
            record(f"{stage}__01_image_features", {
                "out.vision_features": feats.vision, "out.backbone_fpn.0": feats.feat_s0,
                "out.backbone_fpn.1": feats.feat_s1, "out.backbone_fpn.2": feats.vision,
                "out.vision_pos_enc.2": feats.vision_pos})
        return feats, None

    def memory_inputs(self, plan: MemoryPlan, bank: MemoryBank[Memory], pos: Tensor) -> tuple[dict[str, np.ndarray]]:
        """The memory_attention component's memory feeds, as the runtime assembles them (the
        component computes the position encodings `pos` itself)."""
        objects = pos.shape[0]
        return (memory_inputs(plan, lambda f: bank.payload(f).features.float().numpy(),
                              lambda f: bank.payload(f).obj_ptr.numpy(), objects),)
