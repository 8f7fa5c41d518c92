/**
 * Image path from a bundle: RGB image + text (+ positive / negative boxes) -> detections, as the Python
 * runtime's `Segmenter` (toolkit/runtime/image.py): tokenizer or prompt cache, prompt assembly (text tokens ++ geometry
 * tokens), the detector's five graphs, post-processing to boxes, scores and masks at the image's size.
 * Each component's session is released as soon as the run no longer needs it (`resident: true` keeps
 * them, for an app that segments many images).
 */
import type { Bundle } from "./bundle.js";
import { RuntimeInputError } from "./errors.js";
import { Detections, detections, queryScores } from "./postprocess.js";
import { preprocessImage, RgbImage, checkRgb } from "./preprocess.js";
import { PromptCache } from "./prompt-cache.js";
import { Runtime, Sessions } from "./sessions.js";
import { Arr, F32, concat } from "./tensor.js";
import { BpeTokenizer } from "./tokenizer.js";

export type Box = [number, number, number, number]; // x0, y0, x1, y1 in pixels

export interface SegmentOptions {
  boxes?: Box[];
  /** One per box: true = positive (default), false = negative. */
  positive?: boolean[];
  /** Keep queries whose score exceeds this (default: the manifest's, 0.5). */
  threshold?: number;
  maxObjects?: number;
}

/** Pixel boxes -> (N, 1, 4) normalised cx, cy, w, h float32 (double arithmetic, then float32: the reference's rounding). */
export function boxesToPrompt(boxes: Box[], width: number, height: number): Float32Array {
  return Float32Array.from(boxes.flatMap(([x0, y0, x1, y1]) =>
    [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]));
}

export class Segmenter {
  readonly sessions: Sessions;

  private constructor(readonly bundle: Bundle, runtime: Runtime, readonly tokenizer: BpeTokenizer,
                      readonly promptCache: PromptCache, readonly resident: boolean) {
    this.sessions = new Sessions(bundle, runtime);
  }

  static async create(bundle: Bundle, runtime: Runtime, options: { resident?: boolean } = {}): Promise<Segmenter> {
    const spec = bundle.manifest.tokenizer;
    const tokenizer = new BpeTokenizer(await bundle.read(spec.vocabulary), spec.context_length);
    if (tokenizer.startId !== spec.start_id || tokenizer.endId !== spec.end_id) {
      throw new RuntimeInputError(`bundle ${bundle.name}: the manifest's start/end ids are not those of its vocabulary`);
    }
    return new Segmenter(bundle, runtime, tokenizer, await PromptCache.load(bundle), options.resident ?? false);
  }

  private async done(...names: string[]): Promise<void> {
    if (!this.resident) await this.sessions.release(...names);
  }

  check(prompt: string, boxes: Box[], positive: boolean[] | undefined, width: number, height: number): void {
    this.tokenizer.check(prompt);
    for (const box of boxes) {
      const [x0, y0, x1, y1] = box;
      if (box.length !== 4 || !(0 <= x0 && x0 < x1 && x1 <= width && 0 <= y0 && y0 < y1 && y1 <= height)) {
        throw new RuntimeInputError(`box ${box.join(",")} is not a non-empty box inside the ${width}x${height} ` +
                                    "image (x0,y0,x1,y1 in pixels)");
      }
    }
    if (positive && positive.length !== boxes.length) {
      throw new RuntimeInputError(`${positive.length} box labels for ${boxes.length} boxes`);
    }
  }

  async segment(rgb: RgbImage, prompt: string, options: SegmentOptions = {}): Promise<Detections> {
    const { width, height } = rgb;
    const boxes = options.boxes ?? [];
    checkRgb(rgb);
    this.check(prompt, boxes, options.positive, width, height);
    const manifest = this.bundle.manifest;
    const threshold = options.threshold ?? manifest.postprocess.image.default_threshold;
    const run = (name: string, feeds: Record<string, Arr>) => this.sessions.run(name, feeds);
    // Text first: the text encoder (63M parameters) is released before the image's features exist,
    // or does not run when the prompt cache has the prompt.
    const ids = this.tokenizer.ids(prompt);
    let text: Record<string, Arr> | null = this.promptCache.lookup(ids);
    if (!text) {
      text = await run("text_encoder", { token_ids: { data: ids, dims: [1, ids.length] } });
      await this.done("text_encoder");
    }
    const size = manifest.preprocess.image_size;
    const vision = await run("vision_encoder", { image: { data: preprocessImage(rgb, manifest.preprocess),
                                                          dims: [1, 3, size, size] } });
    await this.done("vision_encoder");
    const positive = options.positive ?? boxes.map(() => true);
    const geometry = await run("geometry_encoder", {
      boxes: { data: boxesToPrompt(boxes, width, height), dims: [boxes.length, 1, 4] },
      box_labels: { data: Uint8Array.from(positive, Number), dims: [boxes.length, 1] },
      image_features: vision.fpn_72, image_pos: vision.image_pos });
    await this.done("geometry_encoder");
    const promptFeeds = { prompt: concat([text.text_features, geometry.geometry_tokens], 0),
                          prompt_mask: concat([text.text_mask, geometry.geometry_mask], 1) };
    const memory = (await run("fusion_encoder", { image_features: vision.fpn_72, image_pos: vision.image_pos,
                                                   ...promptFeeds })).memory;
    await this.done("fusion_encoder");
    const decoded = await run("fusion_decoder", { memory, image_pos: vision.image_pos, ...promptFeeds });
    await this.done("fusion_decoder");
    const logits = (await run("scoring", { queries: decoded.queries, ...promptFeeds })).pred_logits as F32;
    await this.done("scoring");
    const masks = await run("segmentation_head", { fpn_288: vision.fpn_288, fpn_144: vision.fpn_144,
                                                   queries: decoded.queries, memory, ...promptFeeds });
    await this.done("segmentation_head");
    const scores = queryScores(logits, (decoded.presence_logit as F32).data[0]);
    let kept = [...scores.keys()].filter((q) => scores[q] > threshold);
    if (options.maxObjects !== undefined && kept.length > options.maxObjects) {
      // the best maxObjects, in query order (a stable sort: equal scores keep query order)
      kept = [...kept].sort((a, b) => scores[b] - scores[a]).slice(0, options.maxObjects).sort((a, b) => a - b);
    }
    return detections(kept, scores, decoded.pred_boxes as F32, masks.pred_masks as F32, height, width,
                      manifest.postprocess.image.mask_threshold);
  }
}
