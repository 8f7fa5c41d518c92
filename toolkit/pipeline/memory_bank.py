"""Memory bank of the video tracker: which stored frames a new frame attends to, and how.

This is the bookkeeping above the neural modules (upstream `Sam3TrackerBase.
_prepare_memory_conditioned_features`, `frame_filter`, `_use_multimask` and `cal_mem_score`,
with the EfficientSAM3 tracker configuration). It is plain Python over frame indices and
per-frame scores, so an application driving exported modules can reproduce it line by line:
the bank stores opaque payloads (tensors, arrays, handles) and `plan` returns which payloads
go into the memory attention with which encodings.

Vocabulary:
- conditioning frame: a frame the user prompted (clicks, box or a mask); its memory is encoded
  from the prompted mask and it is always kept (up to `MAX_COND_FRAMES` closest ones);
- tracked frame: a frame whose mask came from propagation; it is kept as memory only if its
  quality (`frame_quality`) exceeds `SELECTION_THRESHOLD`, except the previous frame, which is
  always a candidate;
- spatial memory: one frame's (64, 72, 72) memory map; conditioning frames use the temporal
  encoding `maskmem_tpos_enc[NUM_MASKMEM - 1]`, the k-th most recent selected tracked frame
  (k = 1..6) uses `maskmem_tpos_enc[k - 1]`;
- object pointer: one 256-d vector per frame and object, given with a temporal distance that
  the modules encode (sine encoding of distance / (max_ptr_distance - 1)).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

NUM_MASKMEM = 7  # temporal slots: the conditioning slot + 6 tracked frames
MAX_COND_FRAMES = 4  # conditioning frames attended to (the temporally closest ones)
MAX_OBJ_PTRS = 16  # object pointers attended to: conditioning frames + up to 15 tracked frames
SELECTION_THRESHOLD = 0.01  # tracked frames with a quality above this are memory candidates
# The SAM decoder gives 3 candidate masks (best IoU wins) when a frame has at most this many
# prompt points (a box counts as two; tracked frames have none), else one mask.
MULTIMASK_MAX_POINTS = 1

Payload = TypeVar("Payload")


def use_multimask(num_prompt_points: int) -> bool:
    """Whether the SAM decoder gives three candidate masks (tracked frames: 0 points -> yes)."""
    return num_prompt_points <= MULTIMASK_MAX_POINTS


def frame_quality(object_score_logits: Sequence[float], iou_scores: Sequence[float]) -> float:
    """Memory-selection quality of a tracked frame, over the objects tracked together.

    Per object: presence = 2 * sigmoid(score) - 1 if the object is predicted present (score > 0),
    else 0; quality = mean over objects of presence * predicted IoU of the chosen mask.
    """
    scores = np.asarray(object_score_logits, dtype=np.float32).reshape(-1)
    ious = np.asarray(iou_scores, dtype=np.float32).reshape(-1)
    presence = np.where(scores > 0, 2 / (1 + np.exp(-scores)) - 1, 0).astype(np.float32)
    return float(np.mean(presence * ious))


@dataclass(frozen=True)
class SpatialMemory:
    frame: int
    tpos_index: int  # row of maskmem_tpos_enc added to this memory's position encoding


@dataclass(frozen=True)
class PointerMemory:
    frame: int
    distance: int  # temporal distance fed to the pointer's temporal encoding


@dataclass(frozen=True)
class MemoryPlan:
    """What one frame attends to, in attention order (spatial memories, then pointers)."""

    spatial: tuple[SpatialMemory, ...]
    pointers: tuple[PointerMemory, ...]
    max_ptr_distance: int  # distances are normalised by (max_ptr_distance - 1)


@dataclass
class MemoryBank(Generic[Payload]):
    """Stored frames of one group of objects tracked together (one payload per frame).

    `conditioning` and `tracked` keep insertion order, which is the attention order of the
    conditioning frames. `quality` holds `frame_quality` of each tracked frame.
    """

    num_frames: int
    conditioning: dict[int, Payload] = field(default_factory=dict)
    tracked: dict[int, Payload] = field(default_factory=dict)
    quality: dict[int, float] = field(default_factory=dict)

    def add_conditioning(self, frame: int, payload: Payload) -> None:
        self.tracked.pop(frame, None)
        self.quality.pop(frame, None)
        self.conditioning[frame] = payload

    def add_tracked(self, frame: int, payload: Payload, quality: float) -> None:
        if frame in self.conditioning:
            raise ValueError(f"frame {frame} is a conditioning frame")
        self.tracked[frame] = payload
        self.quality[frame] = quality

    def payload(self, frame: int) -> Payload:
        return self.conditioning[frame] if frame in self.conditioning else self.tracked[frame]

    def plan(self, frame: int, reverse: bool = False) -> MemoryPlan | None:
        """Memories for tracking `frame` (forward in time, or backward with `reverse`).

        None for a frame that is itself a conditioning frame (it is prompted, not tracked: its
        features get the no-memory embedding instead of memory attention).
        """
        if frame in self.conditioning:
            return None
        if not self.conditioning:
            raise ValueError("the memory bank has no conditioning frame; prompt a frame first")
        return plan_memory(frame, list(self.conditioning), self.quality, self.num_frames, reverse)


def select_conditioning(frame: int, cond_frames: Sequence[int], max_frames: int = MAX_COND_FRAMES) -> list[int]:
    """The conditioning frames attended to: all if at most `max_frames`, else the closest one
    before `frame`, the closest at or after it, then the others by distance."""
    if len(cond_frames) <= max_frames:
        return list(cond_frames)
    selected = []
    before = [t for t in cond_frames if t < frame]
    after = [t for t in cond_frames if t >= frame]
    if before:
        selected.append(max(before))
    if after:
        selected.append(min(after))
    rest = sorted((t for t in cond_frames if t not in selected), key=lambda t: abs(t - frame))
    return selected + rest[:max_frames - len(selected)]


def candidate_frames(frame: int, quality: Mapping[int, float], num_frames: int, reverse: bool) -> list[int]:
    """Tracked frames eligible as memory, ordered from the farthest to the nearest.

    Scans from the neighbouring frame away from `frame` (forward tracking stops before frame
    0, backward tracking runs to the last frame), keeping tracked frames whose quality exceeds
    SELECTION_THRESHOLD until MAX_OBJ_PTRS - 1 are found; the neighbouring frame (the previous
    one in tracking order) is always appended, even if it is weak or not a tracked frame.
    """
    if (frame == 0 and not reverse) or (frame == num_frames - 1 and reverse):
        return []
    limit = min(num_frames, MAX_OBJ_PTRS) - 1
    neighbour = frame + 1 if reverse else frame - 1
    scan = range(neighbour, num_frames) if reverse else range(neighbour, 0, -1)
    found: list[int] = []
    for t in scan:
        if t in quality and quality[t] > SELECTION_THRESHOLD:
            found.insert(0, t)
        if len(found) >= limit:
            break
    if neighbour not in found:
        found.append(neighbour)
    return found


def plan_memory(frame: int, cond_frames: Sequence[int], quality: Mapping[int, float], num_frames: int,
                reverse: bool = False) -> MemoryPlan:
    """The memory plan of a tracked frame (see `MemoryBank.plan`).

    `cond_frames` in the bank's order; `quality` maps every stored tracked frame to its quality.
    A candidate that is not a tracked frame (the neighbouring frame when it is a conditioning
    frame, or not tracked yet) is skipped. (Upstream would also accept an unselected
    conditioning frame there, but the neighbour is always the closest conditioning frame on
    its side, hence selected.)
    """
    selected = select_conditioning(frame, cond_frames)
    stored = set(quality)
    candidates = candidate_frames(frame, quality, num_frames, reverse)

    spatial = [SpatialMemory(t, NUM_MASKMEM - 1) for t in selected]
    # The k-th most recent candidate (k = 1..6), oldest first.
    for k in range(min(len(candidates), NUM_MASKMEM - 1), 0, -1):
        t = candidates[-k]
        if t in stored:
            spatial.append(SpatialMemory(t, k - 1))

    sign = -1 if reverse else 1
    pointers = [PointerMemory(t, (frame - t) * sign) for t in selected if (t >= frame if reverse else t <= frame)]
    # Upstream takes candidates[-1] .. candidates[-(n - 1)]: the farthest candidate gives a spatial
    # memory (when within 6) but never a pointer; the distance is the rank among the candidates.
    max_ptrs = min(num_frames, MAX_OBJ_PTRS)
    for rank in range(1, min(max_ptrs, len(candidates))):
        t = candidates[-rank]
        if t in stored:
            pointers.append(PointerMemory(t, rank))
    return MemoryPlan(tuple(spatial), tuple(pointers), max_ptrs)
