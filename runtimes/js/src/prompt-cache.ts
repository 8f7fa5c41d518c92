/**
 * The bundle's prompt cache (`toolkit build --concepts FILE`): text-encoder outputs of fixed concepts,
 * looked up by token ids, so an app that only uses those prompts never loads the text encoder (63M
 * parameters). The file is numpy's `savez` (a zip of .npy arrays): unzipped with fflate, the .npy
 * headers read here (format 1.0 / 2.0, little-endian, C order).
 */
import { unzipSync } from "fflate";
import type { Bundle } from "./bundle.js";
import { RuntimeInputError } from "./errors.js";
import { Arr, F32 } from "./tensor.js";

interface Npy { data: Float32Array | BigInt64Array | Uint8Array; shape: number[] }

const DTYPES: Record<string, { bytes: number; make: (b: ArrayBuffer) => Npy["data"] }> = {
  "<f4": { bytes: 4, make: (b) => new Float32Array(b) },
  "<i8": { bytes: 8, make: (b) => new BigInt64Array(b) },
  "|b1": { bytes: 1, make: (b) => new Uint8Array(b) },
};

export function parseNpy(bytes: Uint8Array, name: string): Npy {
  const magic = String.fromCharCode(...bytes.subarray(0, 6));
  if (magic !== "\x93NUMPY" || bytes[6] < 1 || bytes[6] > 3) throw new RuntimeInputError(`${name} is not a .npy array`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const [length, start] = bytes[6] === 1 ? [view.getUint16(8, true), 10] : [view.getUint32(8, true), 12];
  const header = new TextDecoder().decode(bytes.subarray(start, start + length));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1] ?? "";
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "").split(",").filter((s) => s.trim()).map(Number);
  const dtype = DTYPES[descr];
  if (!dtype || !/'fortran_order':\s*False/.test(header)) {
    throw new RuntimeInputError(`${name}: unsupported array (${descr}, Fortran order or not); expected float32, int64, bool`);
  }
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + length;
  if (bytes.length - offset !== count * dtype.bytes) throw new RuntimeInputError(`${name}: truncated array`);
  // a copy: the data's offset in the file need not be aligned for the typed array
  return { data: dtype.make(bytes.slice(offset, offset + count * dtype.bytes).buffer), shape };
}

export class PromptCache {
  hits = 0;

  private constructor(private readonly entries: Map<string, [F32, Arr<Uint8Array>]>) {}

  static async load(bundle: Bundle): Promise<PromptCache> {
    const info = bundle.manifest.prompt_cache as { file: string; concepts: string[] } | null;
    const entries = new Map<string, [F32, Arr<Uint8Array>]>();
    if (!info) return new PromptCache(entries);
    let arrays: Record<string, Npy>;
    try {
      const files = unzipSync(await bundle.read(info.file));
      arrays = Object.fromEntries(["token_ids", "text_features", "text_mask"].map((k) => [k, parseNpy(files[`${k}.npy`], k)]));
    } catch (e) {
      if (e instanceof RuntimeInputError) throw e;
      throw new RuntimeInputError(`bundle ${bundle.name}: ${info.file} is not a prompt cache: ${String(e).split("\n")[0]}`);
    }
    const { token_ids: ids, text_features: features, text_mask: mask } = arrays;
    const n = info.concepts.length;
    if (ids.shape[0] !== n || features.shape[0] !== n || mask.shape[0] !== n || features.shape.length !== 3) {
      throw new RuntimeInputError(`bundle ${bundle.name}: ${info.file} does not hold one entry per concept`);
    }
    const [, tokens, width] = features.shape;
    for (let i = 0; i < n; i++) { // text_features[i][:, None] (tokens, 1, width), text_mask[i][None] (1, tokens)
      const key = (ids.data as BigInt64Array).subarray(i * ids.shape[1], (i + 1) * ids.shape[1]).join(",");
      entries.set(key, [{ data: (features.data as Float32Array).slice(i * tokens * width, (i + 1) * tokens * width),
                          dims: [tokens, 1, width] },
                        { data: (mask.data as Uint8Array).slice(i * tokens, (i + 1) * tokens), dims: [1, tokens] }]);
    }
    return new PromptCache(entries);
  }

  /** The text encoder's outputs for these token ids, or null when the prompt is not a cached concept. */
  lookup(ids: BigInt64Array): { text_features: F32; text_mask: Arr<Uint8Array> } | null {
    const found = this.entries.get(ids.join(","));
    if (!found) return null;
    this.hits++;
    return { text_features: found[0], text_mask: found[1] };
  }
}
