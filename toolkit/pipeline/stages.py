"""What the pipelines call on the model: the detector stages and the tracker stages, as protocols.

`ImageSegmenter` and `VideoTracker` drive "something that runs the detector / tracker stages": the
PyTorch model (`toolkit.model.detector.Detector`, `toolkit.model.tracker.TrackerModules`) or its
stand-ins over component runners (`toolkit.pipeline.artifacts.RunnerDetector`, `RunnerTrackerModules`).
Each satisfies these protocols structurally; `tests/test_stages.py` checks every method's signature.

Every stage takes or gives tensors under the reference's layouts; `record(stage, tensors)` receives
the golden manifest's stage and tensor names (see `toolkit.model.recording`).
"""
from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from ..model.recording import Recorder


class DetectorStages(Protocol):
    """The detector stages `ImageSegmenter` (and `VideoTracker`'s text prompts) call, in this order."""

    def eval(self) -> DetectorStages: ...

    def encode_image(self, image: Tensor, record: Recorder | None = None) -> Any:
        """Normalised image (B,3,1008,1008) -> image features, passed as they are to `forward_grounding`."""

    def encode_text(self, token_ids: Tensor, record: Recorder | None = None) -> Any:
        """Token ids (B,77) -> text features, passed as they are to `forward_grounding`."""

    def forward_grounding(self, features: Any, text: Any, boxes: Tensor | None = None,
                          box_labels: Tensor | None = None, record: Recorder | None = None) -> dict[str, Tensor]:
        """Image and text features (+ boxes (N,B,4) cx,cy,w,h with labels (N,B)) -> upstream's grounding
        outputs; `toolkit.model.detector.detections` reads pred_logits, pred_boxes, pred_masks and
        presence_logit_dec."""


class TrackerStages(Protocol):
    """The tracker stages `VideoTracker` calls to track clicks and boxes.

    The modules are where a run's stages are recorded (forward hooks): their outputs are the golden
    stages 02-06. `VideoTracker`'s own frame encoding (the vision backbone's pyramid), memory-input
    layout and mask-prompt path (text prompts) are the PyTorch model's; a stand-in's pipeline
    overrides the first two and refuses the third (`toolkit.pipeline.artifacts.RunnerTracker`).
    """

    sam_prompt_encoder: nn.Module
    sam_mask_decoder: nn.Module
    obj_ptr_proj: nn.Module
    maskmem_backbone: nn.Module
    transformer: nn.ModuleDict  # "encoder": memory attention

    def eval(self) -> TrackerStages: ...

    def sam_heads(self, pix_feat: Tensor, feat_s0: Tensor, feat_s1: Tensor, points: Tensor,
                  labels: Tensor, multimask_output: bool) -> dict[str, Tensor]:
        """One SAM decode with the mask choice (`toolkit.model.tracker.tracker.decode_sam_heads`)."""

    def object_pointer(self, sam_token: Tensor, object_score_logits: Tensor) -> Tensor:
        """SAM output token (B,256) -> object pointer (B,256)."""

    def encode_memory(self, pix_feat: Tensor, mask_probability: Tensor,
                      object_score_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Frame features + mask probability (B,1,1008,1008) -> memory features and their position encoding."""

    def condition_on_memory(self, current: Tensor, current_pos: Tensor, *memory_inputs: Any) -> Tensor:
        """Memory attention: the frame's tokens (HW,B,256) and the pipeline's `memory_inputs` -> (B,256,72,72)."""

    def no_memory_features(self, current: Tensor) -> Tensor:
        """A prompted frame's tokens (HW,B,256) + the no-memory embedding -> (B,256,72,72)."""
