"""All neural parts of the EfficientSAM3 video tracker (checkpoint prefix `tracker.`).

`TrackerModules` holds the SAM prompt encoder / mask decoder, the memory encoder, the memory
attention, the object-pointer projections and the small learned tensors used when the memory
bank is assembled. Its methods are the per-frame steps of upstream's `Sam3TrackerBase`
(`_forward_sam_heads`, `_encode_new_memory`, object-pointer and temporal encodings); which
frames enter the memory bank is decided by the caller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.model.common import MLP

from .mask_decoder import SamMaskDecoder
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder, memory_input
from .prompt_encoder import SamPromptEncoder

IMAGE_SIZE = 1008
DIM = 256
MEM_DIM = 64
NUM_MASKMEM = 7  # memory frames: the conditioning frame slot + 6 previous frames
# Mask logit given to every pixel when the object is predicted absent.
NO_OBJ_SCORE = -1024.0


def sine_encoding_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """(N,) float positions -> (N, dim) as [sin(p / t_i), cos(p / t_i)], t_i = T ** (2*(i//2) / (dim/2))."""
    half = dim // 2
    index = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / half)
    angles = positions[..., None] / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def effective_iou_score(object_score_logits: Tensor, iou_score: Tensor) -> Tensor:
    """Frame quality used for memory selection: mean of (2*sigmoid(s) - 1, or 0 if s <= 0) * IoU."""
    presence = torch.where(object_score_logits > 0, object_score_logits.sigmoid() * 2 - 1,
                           torch.zeros_like(object_score_logits))
    return (presence * iou_score).mean()


def decode_sam_heads(stages, pix_feat: Tensor, feat_s0: Tensor, feat_s1: Tensor, points: Tensor, labels: Tensor,
                     multimask_output: bool) -> dict[str, Tensor]:
    """One SAM decode (upstream `_forward_sam_heads` for point prompts) over `stages`' prompt
    encoder, mask decoder and object pointer: `TrackerModules` or the bundle's runners
    (`toolkit.pipeline.artifacts.RunnerTrackerModules`), so both make the same mask choice.

    pix_feat (B,256,72,72) (memory-conditioned, or + no_mem_embed on a prompted frame),
    points (B,P,2) in 1008 pixels with labels (B,P); a frame without clicks passes one
    point (0, 0) with label -1. Returns
      low_res_multimasks (B,M,288,288), ious (B,M), low_res_masks (B,1,288,288),
      high_res_masks (B,1,1008,1008), obj_ptr (B,256), object_score_logits (B,1),
    with M = 3 if multimask_output else 1; the single mask is the one with the best IoU.
    Masks are NO_OBJ_SCORE everywhere when the object score is <= 0.
    """
    sparse, dense = stages.sam_prompt_encoder(points, labels)
    masks, ious, sam_tokens, object_score_logits = stages.sam_mask_decoder(
        pix_feat, stages.sam_prompt_encoder.dense_pe(), sparse, dense, feat_s0, feat_s1, multimask_output
    )
    is_obj = object_score_logits > 0  # (B, 1)
    masks = torch.where(is_obj[..., None, None], masks, torch.full_like(masks, NO_OBJ_SCORE))
    if multimask_output:
        best = ious.argmax(dim=-1)  # (B,)
        low_res = torch.gather(masks, 1, best[:, None, None, None].expand(-1, 1, *masks.shape[-2:]))
        token = torch.gather(sam_tokens, 1, best[:, None, None].expand(-1, 1, sam_tokens.shape[-1]))[:, 0]
    else:
        low_res, token = masks, sam_tokens[:, 0]
    # Resizing only the chosen mask equals upstream's resize-all-then-choose.
    high_res = F.interpolate(low_res, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return {
        "low_res_multimasks": masks,
        "ious": ious,
        "low_res_masks": low_res,
        "high_res_masks": high_res,
        "obj_ptr": stages.object_pointer(token, object_score_logits),
        "object_score_logits": object_score_logits,
    }


class TrackerModules(nn.Module):
    """The tracker's modules with checkpoint names (load `synthetic_state_dict("tracker.")`)."""

    def __init__(self):
        super().__init__()
        self.sam_prompt_encoder = SamPromptEncoder()
        self.sam_mask_decoder = SamMaskDecoder()
        self.maskmem_backbone = MemoryEncoder()
        # Keys `transformer.encoder.*`: upstream wraps the encoder in an (encoder-only) transformer.
        self.transformer = nn.ModuleDict({"encoder": MemoryAttention()})
        self.obj_ptr_proj = MLP(DIM, DIM, DIM, 3)
        self.obj_ptr_tpos_proj = nn.Linear(DIM, MEM_DIM)
        # Used upstream only when a frame is prompted with a mask instead of clicks
        # (`_use_mask_as_output`: 1008 mask -> 252 logit map); no method here uses it.
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        # Temporal encodings of the memory slots (see `memory_pos`).
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(NUM_MASKMEM, 1, 1, MEM_DIM))
        # Added to the features of a frame with no memory (the prompted frame). no_mem_pos_enc
        # is loaded but unused: upstream's only use of it is unreachable code.
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, DIM))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, DIM))
        # Added to memories / used as pointer when the object is predicted absent.
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, MEM_DIM))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, DIM))

    # --- image features -------------------------------------------------------------------
    def high_res_features(self, fpn_288: Tensor, fpn_144: Tensor) -> tuple[Tensor, Tensor]:
        """Tracker pyramid levels 0, 1 -> (B,32,288,288), (B,64,144,144) (upstream forward_image)."""
        return self.sam_mask_decoder.project_high_res(fpn_288, fpn_144)

    # --- SAM heads ------------------------------------------------------------------------
    def sam_heads(self, pix_feat: Tensor, feat_s0: Tensor, feat_s1: Tensor, points: Tensor,
                  labels: Tensor, multimask_output: bool) -> dict[str, Tensor]:
        """One SAM decode (upstream `_forward_sam_heads` for point prompts): see `decode_sam_heads`."""
        return decode_sam_heads(self, pix_feat, feat_s0, feat_s1, points, labels, multimask_output)

    def object_pointer(self, sam_token: Tensor, object_score_logits: Tensor) -> Tensor:
        """SAM output token (B,256) -> object pointer (B,256); `no_obj_ptr` when the object is absent."""
        present = (object_score_logits > 0).float()
        return present * self.obj_ptr_proj(sam_token) + (1 - present) * self.no_obj_ptr

    # --- memory encoder -------------------------------------------------------------------
    def encode_memory(self, pix_feat: Tensor, mask_probability: Tensor,
                      object_score_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Frame features (B,256,72,72) (the backbone's, not memory-conditioned) + the mask
        probability (B,1,1008,1008) from `memory_mask_probability` (binarised on a clicked frame,
        sigmoid on a tracked one) -> memory features (B,64,72,72), memory position encoding
        (B,64,72,72). Absent objects get `no_obj_embed_spatial` added to every position.
        Upstream stores the features in bfloat16 afterwards; that storage rounding is the caller's.
        """
        features, pos = self.maskmem_backbone(pix_feat, memory_input(mask_probability))
        absent = (object_score_logits <= 0).float()[..., None, None]  # (B,1,1,1)
        features = features + absent * self.no_obj_embed_spatial[..., None, None]
        return features, pos

    # --- memory bank pieces ---------------------------------------------------------------
    def memory_pos(self, maskmem_pos: Tensor, recency: int) -> Tensor:
        """Spatial memory position encoding (HW,B,64) plus the temporal encoding of one memory.

        recency 0: a conditioning (prompted) frame, at any distance -> maskmem_tpos_enc[6];
        recency k = 1..6: the k-th most recent non-conditioning memory -> maskmem_tpos_enc[k - 1].
        """
        index = NUM_MASKMEM - 1 if recency == 0 else recency - 1
        return maskmem_pos + self.maskmem_tpos_enc[index]

    def pointer_tokens(self, obj_ptrs: Tensor, rel_pos: Tensor, max_abs_pos: int) -> tuple[Tensor, Tensor]:
        """Object pointers (N,B,256) with their frame distances `rel_pos` (N,) -> tokens (4N,B,64)
        and their position encodings (4N,B,64).

        Each 256-d pointer is split into four 64-d tokens (pointer-major order); all four share
        the pointer's temporal encoding, a 256-d sine encoding of rel_pos / (max_abs_pos - 1)
        projected by `obj_ptr_tpos_proj`.
        """
        n, batch, _ = obj_ptrs.shape
        split = DIM // MEM_DIM
        pos = self.obj_ptr_tpos_proj(sine_encoding_1d(rel_pos.float() / (max_abs_pos - 1), DIM))
        pos = pos[:, None].expand(n, batch, MEM_DIM).repeat_interleave(split, dim=0)
        tokens = obj_ptrs.reshape(n, batch, split, MEM_DIM).permute(0, 2, 1, 3).reshape(n * split, batch, MEM_DIM)
        return tokens, pos

    def condition_on_memory(self, current: Tensor, current_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                            pointers: Tensor, pointers_pos: Tensor) -> Tensor:
        """Memory attention (see `MemoryAttention`), seq-first in, (B,256,72,72) out."""
        out = self.transformer["encoder"](current, current_pos, memory, memory_pos, pointers, pointers_pos)
        return out.permute(1, 2, 0).reshape(out.shape[1], DIM, 72, 72)

    def no_memory_features(self, current: Tensor) -> Tensor:
        """Prompted (initial conditioning) frame: features (HW,B,256) + no_mem_embed -> (B,256,72,72)."""
        out = current + self.no_mem_embed
        return out.permute(1, 2, 0).reshape(out.shape[1], DIM, 72, 72)
