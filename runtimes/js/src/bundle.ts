/**
 * Opening a bundle on any platform: the manifest (size cap, JSON, schema id, the fields this runtime
 * reads), paths that stay inside the bundle, and the sha256 of every listed file where the platform
 * can read them. Files come from a `BundleSource`: a directory in Node (`esam3-runtime/node`), URLs in
 * a web page (`urlSource`), or the app's own reader (React Native: the app's file system module).
 * The full JSON Schema check of the manifest is the toolkit's (`toolkit verify`); this reader checks
 * what it uses, so a manifest of another shape fails here in one line instead of deep in a run.
 */
import { RuntimeInputError } from "./errors.js";
import type { PreprocessSpec } from "./preprocess.js";
import type { TokenizerSpec } from "./tokenizer.js";

export const SCHEMA_ID = "esam3-toolkit.bundle/1";
export const MANIFEST = "manifest.json";
const MAX_MANIFEST_BYTES = 16 * 2 ** 20;
const ON_DEVICE = "engines/"; // engines built on the device are not covered by checksums

export interface TensorEntry {
  name: string;
  dtype: string;
  shape: (number | string)[];
  artifact_dtype: string;
  artifact_shape: (number | string)[];
}

export interface ComponentEntry {
  format: string;
  file: string;
  inputs: TensorEntry[];
  outputs: TensorEntry[];
}

export interface TrackerConstants {
  multimask_max_points: number;
  no_object_score: number;
  num_maskmem: number;
  max_conditioning_frames: number;
  max_object_pointers: number;
  selection_threshold: number;
  max_prompt_points: number;
  stability_delta: number;
  stability_threshold: number;
}

export interface Manifest {
  schema: string;
  model: { name: string; weights: string; embedded_default: boolean };
  target: { name: string };
  preprocess: PreprocessSpec;
  postprocess: { image: { default_threshold: number; mask_threshold: number }; tracker: TrackerConstants };
  tokenizer: TokenizerSpec & { vocabulary: string };
  prompt_cache: unknown;
  components: Record<string, ComponentEntry>;
  files: { path: string; sha256: string; bytes: number }[];
}

/** Where a bundle's files come from. `model` returns what `InferenceSession.create` takes (a path or bytes). */
export interface BundleSource {
  readonly name: string;
  read(rel: string): Promise<Uint8Array>;
  model(rel: string): Promise<string | Uint8Array>;
  /** Every regular file under the bundle (relative POSIX paths); refuses links and special files. */
  list?(): Promise<string[]>;
  /** sha256 (hex) of a file, where the platform can hash without reading it whole into JavaScript. */
  sha256?(rel: string): Promise<string>;
}

/** A relative path inside the bundle, or a one-line refusal. */
export function checkRelative(source: string, rel: string): string {
  const parts = rel.split("/");
  if (!rel || rel.startsWith("/") || rel.includes("\\") || parts.includes("..") || parts.includes("") ||
      /^[A-Za-z]:/.test(rel)) {
    throw new RuntimeInputError(`bundle ${source}: path ${JSON.stringify(rel)} is not inside the bundle`);
  }
  return rel;
}

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new RuntimeInputError("this platform has no crypto.subtle to check the bundle's sha256 sums; open the " +
      "bundle with { checksums: false } only if it came from a trusted source");
  }
  const digest = await subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function need(ok: boolean, source: string, what: string): void {
  if (!ok) throw new RuntimeInputError(`bundle ${source}: invalid manifest: ${what}`);
}

/** The fields this runtime reads, typed (a bundle built before a field existed is named as such). */
function checkManifest(m: Manifest, source: string): void {
  need(typeof m === "object" && m !== null && m.schema === SCHEMA_ID, source, `not a ${SCHEMA_ID} manifest`);
  const p = m.preprocess;
  need(typeof p?.image_size === "number" && typeof p.scale === "number" && p.mean?.length === 3 && p.std?.length === 3,
       source, "manifest.preprocess needs image_size, scale, mean[3], std[3]");
  const t = m.tokenizer;
  need(typeof t?.vocabulary === "string" && [t.context_length, t.start_id, t.end_id, t.pad_id].every(Number.isInteger),
       source, "manifest.tokenizer needs vocabulary, context_length, start_id, end_id, pad_id");
  const tracker = m.postprocess?.tracker as unknown as Record<string, unknown> | undefined;
  const constants = ["multimask_max_points", "no_object_score", "num_maskmem", "max_conditioning_frames",
    "max_object_pointers", "selection_threshold", "max_prompt_points", "stability_delta", "stability_threshold"];
  const missing = constants.filter((k) => typeof tracker?.[k] !== "number");
  need(missing.length === 0, source, `manifest.postprocess.tracker lacks ${missing.join(", ")} (a bundle built ` +
       "before the JavaScript runtime existed: rebuild it with this toolkit)");
  need(typeof m.postprocess.image?.mask_threshold === "number", source, "manifest.postprocess.image.mask_threshold");
  need(typeof m.components === "object" && m.components !== null, source, "manifest.components");
  for (const [name, c] of Object.entries(m.components)) {
    need(typeof c.file === "string" && typeof c.format === "string" && Array.isArray(c.inputs) &&
         Array.isArray(c.outputs), source, `manifest.components.${name} needs format, file, inputs, outputs`);
  }
  need(Array.isArray(m.files) && m.files.every((e) => typeof e.path === "string" && /^[0-9a-f]{64}$/.test(e.sha256) &&
       Number.isInteger(e.bytes)), source, "manifest.files needs path, sha256, bytes per file");
}

export class Bundle {
  private readonly listed: Map<string, { sha256: string; bytes: number }>;
  private readonly verified = new Set<string>();

  constructor(readonly source: BundleSource, readonly manifest: Manifest, readonly checksums: boolean) {
    this.listed = new Map(manifest.files.map((e) => [e.path, e]));
  }

  get name(): string {
    return this.source.name;
  }

  private async verify(rel: string, bytes?: Uint8Array): Promise<void> {
    if (!this.checksums || this.verified.has(rel)) return;
    const entry = this.listed.get(rel);
    if (!entry) throw new RuntimeInputError(`bundle ${this.name}: file ${rel} is not listed in the manifest`);
    const digest = bytes ? await sha256Hex(bytes) : await this.source.sha256!(rel);
    if ((bytes && bytes.length !== entry.bytes) || digest !== entry.sha256) {
      throw new RuntimeInputError(`bundle ${this.name}: file ${rel} does not match its sha256 in the manifest`);
    }
    this.verified.add(rel);
  }

  /** A file's bytes, checked against the manifest (when opened with checksums). */
  async read(rel: string): Promise<Uint8Array> {
    const bytes = await this.source.read(checkRelative(this.name, rel));
    await this.verify(rel, bytes);
    return bytes;
  }

  /** A component's model as `InferenceSession.create` takes it, checked against the manifest. */
  async model(rel: string): Promise<string | Uint8Array> {
    const model = await this.source.model(checkRelative(this.name, rel));
    await this.verify(rel, typeof model === "string" ? undefined : model);
    return model;
  }

  /** Every file checked now (where the source can list and hash), instead of on first use. */
  async verifyAll(): Promise<void> {
    const present = new Set((await this.source.list!()).filter((rel) => rel !== MANIFEST && !rel.startsWith(ON_DEVICE)));
    for (const rel of [...new Set([...this.listed.keys(), ...present])].sort()) {
      if (!this.listed.has(rel)) throw new RuntimeInputError(`bundle ${this.name}: file ${rel} is not listed in the manifest`);
      if (!present.has(rel)) throw new RuntimeInputError(`bundle ${this.name}: file ${rel} is missing`);
      await this.verify(checkRelative(this.name, rel));
    }
  }
}

export interface OpenOptions {
  /** Check every file's sha256 (default true): all at open where the source can list and hash files,
   * else each file when it is first read. */
  checksums?: boolean;
}

export async function openBundle(source: BundleSource, options: OpenOptions = {}): Promise<Bundle> {
  const checksums = options.checksums ?? true;
  let manifest: Manifest;
  try {
    const bytes = await source.read(MANIFEST);
    if (bytes.length > MAX_MANIFEST_BYTES) {
      throw new RuntimeInputError(`bundle ${source.name}: ${MANIFEST} is larger than ${MAX_MANIFEST_BYTES} bytes`);
    }
    manifest = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    if (e instanceof RuntimeInputError) throw e;
    throw new RuntimeInputError(`bundle ${source.name}: no readable ${MANIFEST} (not a finished bundle?): ` +
                                `${String(e).split("\n")[0]}`);
  }
  checkManifest(manifest, source.name);
  for (const e of manifest.files) checkRelative(source.name, e.path);
  const bundle = new Bundle(source, manifest, checksums);
  if (checksums && source.list && source.sha256) await bundle.verifyAll();
  return bundle;
}

/** Files over HTTP(S) relative to `base` (a web page: the bundle served next to it). */
export function urlSource(base: string | URL, fetchFn: typeof fetch = globalThis.fetch): BundleSource {
  const root = new URL(base, globalThis.location?.href);
  if (!root.pathname.endsWith("/")) root.pathname += "/";
  const read = async (rel: string) => {
    const response = await fetchFn(new URL(rel, root));
    if (!response.ok) throw new RuntimeInputError(`bundle ${root}: ${rel}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  };
  return { name: root.href, read, model: read };
}
