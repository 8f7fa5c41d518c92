/**
 * Detector post-processing and the mask resize, as the Python runtime's (toolkit/pipeline/postprocess.py), in
 * float32 arithmetic step by step (Math.fround): scores, boxes in pixels, masks at the image's size.
 */
import { F32 } from "./tensor.js";

const f = Math.fround;

/** float32 sigmoid: 1 / (1 + exp(-x)). */
export const sigmoid = (x: number) => f(1 / f(1 + f(Math.exp(-x))));

interface LinearTaps { lo: Int32Array; hi: Int32Array; wLo: Float32Array; wHi: Float32Array }

/** 1-D linear taps with half-pixel centres, rounded as torch's CPU kernel: a float32 scale and the
 * source position scale * (i + 0.5) - 0.5 rounded to float32 once. */
function linearTaps(inSize: number, outSize: number): LinearTaps {
  const scale = f(inSize / outSize);
  const t = { lo: new Int32Array(outSize), hi: new Int32Array(outSize), wLo: new Float32Array(outSize),
              wHi: new Float32Array(outSize) };
  for (let i = 0; i < outSize; i++) {
    const src = Math.max(f((i + 0.5) * scale - 0.5), 0);
    const lo = Math.min(Math.trunc(src), inSize - 1);
    t.lo[i] = lo;
    t.hi[i] = Math.min(lo + 1, inSize - 1);
    t.wHi[i] = f(src - lo);
    t.wLo[i] = f(1 - t.wHi[i]);
  }
  return t;
}

/** Bilinear resize (align_corners=False, torch's rounding) of the last two axes: (..., h, w) -> (..., H, W). */
export function resizeBilinear(x: F32, outH: number, outW: number): F32 {
  const [h, w] = x.dims.slice(-2);
  const planes = x.data.length / (h * w);
  const th = linearTaps(h, outH);
  const tw = linearTaps(w, outW);
  const out = new Float32Array(planes * outH * outW);
  const cols = new Float32Array(h * outW);
  for (let p = 0; p < planes; p++) {
    const src = x.data.subarray(p * h * w, (p + 1) * h * w);
    for (let r = 0; r < h; r++) { // width first on the small input, then height (torch's order)
      for (let c = 0; c < outW; c++) {
        cols[r * outW + c] = f(src[r * w + tw.lo[c]] * tw.wLo[c]) + f(src[r * w + tw.hi[c]] * tw.wHi[c]);
      }
    }
    const dst = out.subarray(p * outH * outW, (p + 1) * outH * outW);
    for (let r = 0; r < outH; r++) {
      const a = th.lo[r] * outW;
      const b = th.hi[r] * outW;
      for (let c = 0; c < outW; c++) dst[r * outW + c] = f(cols[a + c] * th.wLo[r]) + f(cols[b + c] * th.wHi[r]);
    }
  }
  return { data: out, dims: [...x.dims.slice(0, -2), outH, outW] };
}

/** Kept objects of one image, in query order. */
export interface Detections {
  count: number;
  width: number;
  height: number;
  boxesXyxyPx: Float32Array; // (count, 4), original-image pixels
  scores: Float32Array; // (count,)
  masks: Uint8Array; // (count, height, width) 0 / 1
  maskProbs: Float32Array; // (count, height, width)
  queryIndices: Int32Array; // (count,)
}

/** Query scores: sigmoid(pred_logits) * sigmoid(presence_logit), float32. */
export function queryScores(predLogits: F32, presenceLogit: number): Float32Array {
  const presence = sigmoid(presenceLogit);
  return predLogits.data.map((l) => f(sigmoid(l) * presence));
}

/** Detections of the given queries (pred_boxes (1, Q, 4) normalised cx, cy, w, h; pred_masks (1, Q, h, w) logits). */
export function detections(queries: number[], scores: Float32Array, predBoxes: F32, predMasks: F32, height: number,
                           width: number, maskThreshold: number): Detections {
  const n = queries.length;
  const [mh, mw] = predMasks.dims.slice(-2);
  const out: Detections = { count: n, width, height, boxesXyxyPx: new Float32Array(n * 4), scores: new Float32Array(n),
    masks: new Uint8Array(n * height * width), maskProbs: new Float32Array(n * height * width),
    queryIndices: Int32Array.from(queries) };
  queries.forEach((q, i) => {
    const [cx, cy, w, h] = predBoxes.data.subarray(q * 4, q * 4 + 4);
    const xyxy = [f(cx - f(0.5 * w)), f(cy - f(0.5 * h)), f(cx + f(0.5 * w)), f(cy + f(0.5 * h))];
    const scale = [width, height, width, height];
    xyxy.forEach((v, k) => (out.boxesXyxyPx[i * 4 + k] = f(v * scale[k])));
    out.scores[i] = scores[q];
    const logits = resizeBilinear({ data: predMasks.data.subarray(q * mh * mw, (q + 1) * mh * mw), dims: [mh, mw] },
                                  height, width).data;
    const base = i * height * width;
    for (let p = 0; p < logits.length; p++) {
      const prob = sigmoid(logits[p]);
      out.maskProbs[base + p] = prob;
      out.masks[base + p] = prob > maskThreshold ? 1 : 0;
    }
  });
  return out;
}
