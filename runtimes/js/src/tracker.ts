/**
 * Video path from a bundle: clicks or a box on one frame, then propagation, as the Python runtime's
 * `Tracker` (toolkit/runtime/video.py): frame pre-processing, prompt encoder, mask decoder, the mask
 * choice (best predicted IoU of the three multimask outputs, or mask 0 with its stability fallback),
 * object pointer, the memory bank (memory-bank.ts), memory attention, the memory encoder's mask input
 * (the chosen 288 mask resized to 1008, then > 0 on the prompted frame, sigmoid on a tracked one) and
 * the frame output (the 288 mask resized to the frame, > 0). Memories are stored in bfloat16 as
 * upstream stores them (rounded to nearest even). One object per session, as the Python runtime.
 */
import type { Bundle, TrackerConstants } from "./bundle.js";
import { RuntimeInputError } from "./errors.js";
import { MemoryBank, frameQuality, useMultimask } from "./memory-bank.js";
import { resizeBilinear, sigmoid } from "./postprocess.js";
import { preprocessFrame, RgbImage } from "./preprocess.js";
import type { Box } from "./segmenter.js";
import { Runtime, Sessions } from "./sessions.js";
import { Arr, F32, f32 } from "./tensor.js";

const COMPONENTS = ["vision_encoder", "tracker_neck", "prompt_encoder", "mask_decoder", "object_pointer",
  "memory_encoder", "memory_attention"];

/** The frames of a clip: all of one size; `rgb(i)` decodes frame i (called once per frame and pass). */
export interface Frames {
  count: number;
  width: number;
  height: number;
  rgb(index: number): RgbImage | Promise<RgbImage>;
}

/** Clicks (label 1 positive, 0 negative) and / or a box, in pixels. */
export interface ClickPrompt {
  points?: [number, number][];
  labels?: number[];
  box?: Box;
}

export interface FrameResult {
  index: number;
  masks: Uint8Array; // (objects, height, width) 0 / 1
  objectScoreLogits: Float32Array; // (objects,)
}

/** float32 -> bfloat16 bits, round to nearest even (torch's `.to(torch.bfloat16)` on finite values). */
export function toBfloat16(x: Float32Array): Uint16Array {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  return Uint16Array.from(bits, (b) => ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff);
}

export function fromBfloat16(bits: Uint16Array): Float32Array {
  const out = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = bits[i] << 16;
  return new Float32Array(out.buffer);
}

interface Memory { features: Uint16Array; dims: number[]; objPtr: Float32Array }

interface FrameFeatures { tracker: Arr; noMemory: Arr; imagePos: Arr; featS0: Arr; featS1: Arr }

interface Heads { lowRes: F32; highRes: F32; ious: F32; objPtr: F32; scores: F32 }

const argmax = (x: ArrayLike<number>, from: number, to: number) => {
  let best = from;
  for (let i = from + 1; i < to; i++) if (x[i] > x[best]) best = i;
  return best;
};

export class TrackingSession {
  constructor(readonly tracker: Tracker, readonly frames: Frames, readonly promptFrame: number,
              readonly bank: MemoryBank<Memory>, readonly promptOutput: [F32, F32]) {}

  /** The prompted frame, then the following frames, then the earlier ones. */
  async *propagate(): AsyncGenerator<FrameResult> {
    for (let t = this.promptFrame; t < this.frames.count; t++) yield await this.tracker.propagateFrame(this, t, false);
    for (let t = this.promptFrame - 1; t >= 0; t--) yield await this.tracker.propagateFrame(this, t, true);
  }
}

export class Tracker {
  readonly sessions: Sessions;
  readonly constants: TrackerConstants;

  constructor(readonly bundle: Bundle, runtime: Runtime) {
    this.sessions = new Sessions(bundle, runtime);
    this.constants = bundle.manifest.postprocess.tracker;
    const missing = COMPONENTS.filter((n) => !(n in bundle.manifest.components));
    if (missing.length) throw new RuntimeInputError(`bundle ${bundle.name} lacks ${missing.join(", ")} (a partial build?)`);
  }

  private get size(): number {
    return this.bundle.manifest.preprocess.image_size;
  }

  async encodeFrame(rgb: RgbImage): Promise<FrameFeatures> {
    const image = preprocessFrame(rgb, this.bundle.manifest.preprocess);
    const vision = await this.sessions.run("vision_encoder", { image: { data: image, dims: [1, 3, this.size, this.size] } });
    const neck = await this.sessions.run("tracker_neck", { backbone_features: vision.backbone_features });
    return { tracker: neck.tracker_features, noMemory: neck.no_memory_features, imagePos: vision.image_pos,
             featS0: neck.feat_s0, featS1: neck.feat_s1 };
  }

  /** Mask 0 and its IoU, or the best of masks 1..3 where mask 0 is unstable (per object). */
  private stableSingleMask(masks: F32, iou: F32): [F32, F32] {
    const [b, m, h, w] = masks.dims;
    const plane = h * w;
    const f = Math.fround;
    const delta = f(this.constants.stability_delta);
    const out = f32([b, 1, h, w]);
    const outIou = f32([b, 1]);
    for (let o = 0; o < b; o++) {
      const single = masks.data.subarray(o * m * plane, o * m * plane + plane);
      let inner = 0;
      let outer = 0;
      for (const v of single) {
        if (v > delta) inner++;
        if (v > -delta) outer++;
      }
      const stability = outer > 0 ? f(inner / Math.max(outer, 1)) : 1;
      const choice = stability >= f(this.constants.stability_threshold) ? 0 : argmax(iou.data, o * m + 1, o * m + m) - o * m;
      out.data.set(masks.data.subarray((o * m + choice) * plane, (o * m + choice + 1) * plane), o * plane);
      outIou.data[o] = iou.data[o * m + choice];
    }
    return [out, outIou];
  }

  /** Prompt encoder + mask decoder on (B, 256, 72, 72), the mask choice, the object pointer. */
  async samHeads(pix: Arr, feats: FrameFeatures, points: F32, labels: Arr<Int32Array>): Promise<Heads> {
    const run = (name: string, feeds: Record<string, Arr>) => this.sessions.run(name, feeds);
    const multimask = useMultimask(this.constants, labels.data.subarray(0, labels.dims[1]).filter((l) => l >= 0).length);
    const prompt = await run("prompt_encoder", { points, point_labels: labels });
    const out = await run("mask_decoder", { image_embeddings: pix, sparse_embeddings: prompt.sparse_embeddings,
      dense_embeddings: prompt.dense_embeddings, feat_s0: feats.featS0, feat_s1: feats.featS1 });
    const [masks, iou, tokens, scores] = ["masks", "iou", "mask_tokens", "object_score_logits"].map((k) => out[k] as F32);
    const [b, m, h, w] = masks.dims;
    const plane = h * w;
    const tokenSize = tokens.dims[2];
    const lowRes = f32([b, 1, h, w]);
    const token = f32([b, tokenSize]);
    let ious: F32;
    if (multimask) { // masks 1..3, the best predicted IoU
      ious = f32([b, m - 1]);
      for (let o = 0; o < b; o++) {
        ious.data.set(iou.data.subarray(o * m + 1, o * m + m), o * (m - 1));
        const best = argmax(iou.data, o * m + 1, o * m + m) - o * m;
        lowRes.data.set(masks.data.subarray((o * m + best) * plane, (o * m + best + 1) * plane), o * plane);
        token.data.set(tokens.data.subarray((o * m + best) * tokenSize, (o * m + best + 1) * tokenSize), o * tokenSize);
      }
    } else {
      const [single, singleIou] = this.stableSingleMask(masks, iou);
      lowRes.data.set(single.data);
      ious = singleIou;
      for (let o = 0; o < b; o++) token.data.set(tokens.data.subarray(o * m * tokenSize, (o * m + 1) * tokenSize), o * tokenSize);
    }
    for (let o = 0; o < b; o++) { // an absent object's masks
      if (!(scores.data[o] > 0)) lowRes.data.fill(this.constants.no_object_score, o * plane, (o + 1) * plane);
    }
    const highRes = resizeBilinear(lowRes, this.size, this.size);
    const objPtr = (await run("object_pointer", { sam_token: token, object_score_logits: scores })).object_pointer as F32;
    return { lowRes, highRes, ious, objPtr, scores };
  }

  async encodeMemory(feats: FrameFeatures, highRes: F32, scores: F32, fromPrompt: boolean): Promise<F32> {
    const probability = highRes.data.map(fromPrompt ? (v) => (v > 0 ? 1 : 0) : sigmoid);
    const out = await this.sessions.run("memory_encoder", { image_features: feats.tracker,
      mask_probability: { data: probability, dims: highRes.dims }, object_score_logits: scores });
    return out.memory_features as F32;
  }

  checkPrompt(prompt: ClickPrompt, width: number, height: number): void {
    const points = prompt.points ?? [];
    const labels = prompt.labels ?? points.map(() => 1);
    if (labels.length !== points.length) throw new RuntimeInputError(`${labels.length} labels for ${points.length} points`);
    if (!labels.includes(1) && !prompt.box) throw new RuntimeInputError("a click prompt needs a positive point or a box");
    for (const [x, y] of points) {
      if (!(0 <= x && x <= width && 0 <= y && y <= height)) {
        throw new RuntimeInputError(`point ${x},${y} is outside the ${width}x${height} frame (x,y in pixels)`);
      }
    }
    if (prompt.box) {
      const [x0, y0, x1, y1] = prompt.box;
      if (!(0 <= x0 && x0 < x1 && x1 <= width && 0 <= y0 && y0 < y1 && y1 <= height)) {
        throw new RuntimeInputError(`box ${prompt.box.join(",")} is not a non-empty box inside the ${width}x${height} frame`);
      }
    }
    const count = points.length + (prompt.box ? 2 : 0);
    if (count > this.constants.max_prompt_points) {
      throw new RuntimeInputError(`${count} prompt points (a box counts as two); at most ${this.constants.max_prompt_points}`);
    }
  }

  /** (1, P, 2) float32 on the model's grid and (1, P) int32 labels, the box first as corners labelled 2 and 3. */
  modelPoints(prompt: ClickPrompt, width: number, height: number): [F32, Arr<Int32Array>] {
    const xy: number[] = [];
    const labels: number[] = [];
    if (prompt.box) {
      const [x0, y0, x1, y1] = prompt.box;
      xy.push(x0 / width, y0 / height, x1 / width, y1 / height);
      labels.push(2, 3);
    }
    for (const [x, y] of prompt.points ?? []) xy.push(x / width, y / height);
    labels.push(...(prompt.labels ?? (prompt.points ?? []).map(() => 1)));
    const grid = Math.fround(this.size);
    return [f32([1, labels.length, 2], Float32Array.from(xy, (v) => Math.fround(v) * grid)),
            { data: Int32Array.from(labels), dims: [1, labels.length] }];
  }

  /** Prompt frame `frame` with clicks / a box (one object) and encode its memory. */
  async prompt(frames: Frames, frame: number, prompt: ClickPrompt): Promise<TrackingSession> {
    if (!(Number.isInteger(frame) && frame >= 0 && frame < frames.count)) {
      throw new RuntimeInputError(`frame ${frame} is out of range (0..${frames.count - 1})`);
    }
    this.checkPrompt(prompt, frames.width, frames.height);
    const feats = await this.encodeFrame(await this.frameRgb(frames, frame));
    const heads = await this.samHeads(feats.noMemory, feats, ...this.modelPoints(prompt, frames.width, frames.height));
    const features = await this.encodeMemory(feats, heads.highRes, heads.scores, true);
    const bank = new MemoryBank<Memory>(this.constants, frames.count);
    bank.addConditioning(frame, { features: toBfloat16(features.data), dims: features.dims, objPtr: heads.objPtr.data });
    return new TrackingSession(this, frames, frame, bank, [heads.lowRes, heads.scores]);
  }

  private async frameRgb(frames: Frames, index: number): Promise<RgbImage> {
    const rgb = await frames.rgb(index);
    if (rgb.width !== frames.width || rgb.height !== frames.height) {
      throw new RuntimeInputError(`frame ${index} is ${rgb.width}x${rgb.height}, the clip ${frames.width}x${frames.height}`);
    }
    return rgb;
  }

  async propagateFrame(session: TrackingSession, t: number, reverse: boolean): Promise<FrameResult> {
    const { bank, frames } = session;
    if (t === session.promptFrame) return this.output(t, ...session.promptOutput, frames);
    const feats = await this.encodeFrame(await this.frameRgb(frames, t));
    const plan = bank.plan(t, reverse)!;
    const stored = bank.payload(session.promptFrame); // every memory has the prompted frame's shape
    const objects = stored.dims[0];
    const memory = f32([plan.spatial.length, ...stored.dims]);
    plan.spatial.forEach((s, i) => memory.data.set(fromBfloat16(bank.payload(s.frame).features), i * stored.features.length));
    const pointers = f32([plan.pointers.length, objects, stored.objPtr.length / objects]);
    plan.pointers.forEach((p, i) => pointers.data.set(bank.payload(p.frame).objPtr, i * stored.objPtr.length));
    const conditioned = (await this.sessions.run("memory_attention", {
      image_features: feats.tracker, image_pos: feats.imagePos, memory,
      memory_time_index: { data: BigInt64Array.from(plan.spatial, (s) => BigInt(s.tposIndex)), dims: [plan.spatial.length] },
      object_pointers: pointers,
      pointer_frame_distance: { data: BigInt64Array.from(plan.pointers, (p) => BigInt(p.distance)), dims: [plan.pointers.length] },
      max_pointer_distance: { data: BigInt64Array.of(BigInt(plan.maxPtrDistance)), dims: [] },
    })).conditioned_features;
    const noClick: [F32, Arr<Int32Array>] = [f32([objects, 1, 2]), { data: Int32Array.of(-1), dims: [objects, 1] }];
    const heads = await this.samHeads(conditioned, feats, ...noClick);
    const bestIou = Array.from({ length: objects }, (_, o) => {
      const row = heads.ious.data.subarray(o * heads.ious.dims[1], (o + 1) * heads.ious.dims[1]);
      return Math.max(...row);
    });
    const quality = frameQuality(heads.scores.data, bestIou);
    const features = await this.encodeMemory(feats, heads.highRes, heads.scores, false);
    bank.addTracked(t, { features: toBfloat16(features.data), dims: features.dims, objPtr: heads.objPtr.data }, quality);
    return this.output(t, heads.lowRes, heads.scores, frames);
  }

  private output(t: number, lowRes: F32, scores: F32, frames: Frames): FrameResult {
    const video = resizeBilinear(lowRes, frames.height, frames.width).data;
    return { index: t, masks: Uint8Array.from(video, (v) => (v > 0 ? 1 : 0)), objectScoreLogits: Float32Array.from(scores.data) };
  }
}
