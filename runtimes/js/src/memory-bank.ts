/**
 * The tracker's memory bank, line by line the Python rules (toolkit/pipeline/memory_bank.py, upstream
 * `_prepare_memory_conditioned_features` with the EfficientSAM3 configuration), its numbers from the
 * bundle manifest (postprocess.tracker): which stored frames a frame attends to, with which temporal
 * slot, and which object pointers with which distance.
 */
import type { TrackerConstants } from "./bundle.js";

export interface SpatialMemory { frame: number; tposIndex: number }
export interface PointerMemory { frame: number; distance: number }
export interface MemoryPlan { spatial: SpatialMemory[]; pointers: PointerMemory[]; maxPtrDistance: number }

/** Whether the SAM decoder gives three candidate masks (tracked frames: 0 points -> yes). */
export const useMultimask = (c: TrackerConstants, promptPoints: number) => promptPoints <= c.multimask_max_points;

/** Memory-selection quality of a frame: mean over objects of presence * predicted IoU (float32). */
export function frameQuality(scoreLogits: ArrayLike<number>, ious: ArrayLike<number>): number {
  const f = Math.fround;
  let sum = 0;
  for (let i = 0; i < scoreLogits.length; i++) {
    const s = scoreLogits[i];
    const presence = s > 0 ? f(f(2 / f(1 + f(Math.exp(-s)))) - 1) : 0;
    sum = f(sum + f(presence * ious[i]));
  }
  return f(sum / scoreLogits.length);
}

function selectConditioning(c: TrackerConstants, frame: number, cond: number[]): number[] {
  if (cond.length <= c.max_conditioning_frames) return [...cond];
  const selected: number[] = [];
  const before = cond.filter((t) => t < frame);
  const after = cond.filter((t) => t >= frame);
  if (before.length) selected.push(Math.max(...before));
  if (after.length) selected.push(Math.min(...after));
  const rest = cond.filter((t) => !selected.includes(t)).sort((a, b) => Math.abs(a - frame) - Math.abs(b - frame));
  return [...selected, ...rest.slice(0, c.max_conditioning_frames - selected.length)];
}

/** Tracked frames eligible as memory, farthest to nearest; the neighbouring frame always comes last. */
function candidateFrames(c: TrackerConstants, frame: number, quality: Map<number, number>, numFrames: number,
                         reverse: boolean): number[] {
  if ((frame === 0 && !reverse) || (frame === numFrames - 1 && reverse)) return [];
  const limit = Math.min(numFrames, c.max_object_pointers) - 1;
  const neighbour = reverse ? frame + 1 : frame - 1;
  const found: number[] = [];
  for (let t = neighbour; reverse ? t < numFrames : t > 0; t += reverse ? 1 : -1) {
    const q = quality.get(t);
    if (q !== undefined && q > c.selection_threshold) found.unshift(t);
    if (found.length >= limit) break;
  }
  if (!found.includes(neighbour)) found.push(neighbour);
  return found;
}

export class MemoryBank<Payload> {
  readonly conditioning = new Map<number, Payload>();
  readonly tracked = new Map<number, Payload>();
  readonly quality = new Map<number, number>();

  constructor(readonly constants: TrackerConstants, readonly numFrames: number) {}

  addConditioning(frame: number, payload: Payload): void {
    this.tracked.delete(frame);
    this.quality.delete(frame);
    this.conditioning.set(frame, payload);
  }

  addTracked(frame: number, payload: Payload, quality: number): void {
    if (this.conditioning.has(frame)) throw new Error(`frame ${frame} is a conditioning frame`);
    this.tracked.set(frame, payload);
    this.quality.set(frame, quality);
  }

  payload(frame: number): Payload {
    return (this.conditioning.has(frame) ? this.conditioning.get(frame) : this.tracked.get(frame))!;
  }

  /** Memories for tracking `frame` forward (or backward with `reverse`); null for a conditioning frame. */
  plan(frame: number, reverse = false): MemoryPlan | null {
    if (this.conditioning.has(frame)) return null;
    if (!this.conditioning.size) throw new Error("the memory bank has no conditioning frame; prompt a frame first");
    const c = this.constants;
    const selected = selectConditioning(c, frame, [...this.conditioning.keys()]);
    const candidates = candidateFrames(c, frame, this.quality, this.numFrames, reverse);
    const spatial = selected.map((t) => ({ frame: t, tposIndex: c.num_maskmem - 1 }));
    for (let k = Math.min(candidates.length, c.num_maskmem - 1); k > 0; k--) { // k-th most recent, oldest first
      const t = candidates[candidates.length - k];
      if (this.quality.has(t)) spatial.push({ frame: t, tposIndex: k - 1 });
    }
    const sign = reverse ? -1 : 1;
    const pointers = selected.filter((t) => (reverse ? t >= frame : t <= frame))
      .map((t) => ({ frame: t, distance: (frame - t) * sign }));
    // the farthest candidate gives a spatial memory (when within reach) but never a pointer
    const maxPtrs = Math.min(this.numFrames, c.max_object_pointers);
    for (let rank = 1; rank < Math.min(maxPtrs, candidates.length); rank++) {
      const t = candidates[candidates.length - rank];
      if (this.quality.has(t)) pointers.push({ frame: t, distance: rank });
    }
    return { spatial, pointers, maxPtrDistance: maxPtrs };
  }
}
