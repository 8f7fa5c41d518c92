/**
 * ONNX Runtime sessions over a bundle's components, created on first use through the app's factory
 * (onnxruntime-node, -web or -react-native: the same `InferenceSession` API) and released when the
 * pipeline no longer needs them, as the Python runtime does. Feeds are converted to each artifact's
 * tensor types (the manifest's artifact_dtype / artifact_shape) and outputs back to the declared ones.
 */
import type { InferenceSession, Tensor } from "onnxruntime-common";
import type { Bundle } from "./bundle.js";
import { RuntimeInputError } from "./errors.js";
import { Arr, Data } from "./tensor.js";

const ORT_FORMATS = ["onnx", "ort", "tensorrt"]; // tensorrt: the TensorRT-ready ONNX, runnable on ONNX Runtime

/** What the runtime needs from an ONNX Runtime package: its Tensor class and a way to create sessions. */
export interface Runtime {
  Tensor: typeof Tensor;
  /** `model`: a file path (Node) or the model's bytes; `component`: the component's name. */
  createSession(model: string | Uint8Array, component: string): Promise<InferenceSession>;
}

type Create = (model: string | Uint8Array, options: InferenceSession.SessionOptions) => Promise<InferenceSession>;

/** A Runtime over an ONNX Runtime module (`import * as ort from "onnxruntime-node"` / "-web" / "-react-native"). */
export function ortRuntime(ort: { Tensor: typeof Tensor; InferenceSession: typeof InferenceSession },
                           options: InferenceSession.SessionOptions = {}): Runtime {
  return {
    Tensor: ort.Tensor,
    // no memory pattern: it pre-allocates one block for every intermediate of a shape (the Python runtime's choice)
    createSession: (model, _component) => (ort.InferenceSession.create as Create)(model, { enableMemPattern: false,
                                                                                             ...options }),
  };
}

const converters: Record<string, (x: Data) => Data> = {
  float32: (x) => (x instanceof Float32Array ? x : Float32Array.from(x as ArrayLike<number>)),
  int32: (x) => (x instanceof Int32Array ? x : Int32Array.from(x instanceof BigInt64Array ? Array.from(x, Number) : x)),
  int64: (x) => (x instanceof BigInt64Array ? x : BigInt64Array.from(Array.from(x as ArrayLike<number>, BigInt))),
  bool: (x) => (x instanceof Uint8Array ? x : Uint8Array.from(Array.from(x as ArrayLike<number | bigint>, (v) => (v ? 1 : 0)))),
};

export class Sessions {
  private readonly open = new Map<string, InferenceSession>();
  readonly loads: string[] = []; // every session creation, in order (tests read it)

  constructor(readonly bundle: Bundle, readonly runtime: Runtime) {}

  private entry(name: string) {
    const entry = this.bundle.manifest.components[name];
    if (!entry) throw new RuntimeInputError(`bundle ${this.bundle.name} has no component ${name} (a partial build?)`);
    if (!ORT_FORMATS.includes(entry.format)) {
      throw new RuntimeInputError(`bundle ${this.bundle.name}: ${name} is a ${entry.format} artifact; this runtime ` +
                                  `runs ONNX Runtime artifacts (${ORT_FORMATS.join(", ")})`);
    }
    return entry;
  }

  private async load(name: string): Promise<InferenceSession> {
    const entry = this.entry(name);
    const model = await this.bundle.model(entry.file);
    let session: InferenceSession;
    try {
      session = await this.runtime.createSession(model, name);
    } catch (e) {
      throw new RuntimeInputError(`bundle ${this.bundle.name}: ${entry.file} does not load in ONNX Runtime: ` +
                                  String(e).split("\n")[0].slice(0, 200));
    }
    const have = [[...session.inputNames].sort(), [...session.outputNames].sort()];
    const want = [entry.inputs.map((e) => e.name).sort(), entry.outputs.map((e) => e.name).sort()];
    if (JSON.stringify(have) !== JSON.stringify(want)) {
      throw new RuntimeInputError(`bundle ${this.bundle.name}: ${entry.file} has tensors ${JSON.stringify(have)}, ` +
                                  `the manifest lists ${JSON.stringify(want)}`);
    }
    this.loads.push(name);
    return session;
  }

  async run(name: string, feeds: Record<string, Arr>): Promise<Record<string, Arr>> {
    const entry = this.entry(name);
    if (!this.open.has(name)) this.open.set(name, await this.load(name));
    const tensors: Record<string, Tensor> = {};
    for (const e of entry.inputs) {
      const feed = feeds[e.name];
      if (!feed) throw new Error(`${name}: no feed for ${e.name}`);
      const dims = e.shape.length === 0 && e.artifact_shape.length === 1 ? [1] : feed.dims;
      const type = e.artifact_dtype as "float32";
      tensors[e.name] = new this.runtime.Tensor(type, converters[e.artifact_dtype](feed.data) as Float32Array, dims);
    }
    const results = await this.open.get(name)!.run(tensors);
    const out: Record<string, Arr> = {};
    for (const e of entry.outputs) {
      const y = results[e.name];
      const data = converters[e.dtype](y.data as Data);
      out[e.name] = { data, dims: e.shape.length === 0 ? [] : [...y.dims] };
      y.dispose?.();
    }
    return out;
  }

  /** Drop sessions (their weights and buffers) that the rest of the run does not need. */
  async release(...names: string[]): Promise<void> {
    for (const name of names) {
      const session = this.open.get(name);
      this.open.delete(name);
      await session?.release();
    }
  }

  get openNames(): string[] {
    return [...this.open.keys()];
  }
}
