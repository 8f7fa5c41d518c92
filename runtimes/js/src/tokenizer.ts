/**
 * CLIP byte-level BPE, the Python runtime's `toolkit/runtime/tokenizer.py` (upstream SimpleTokenizer,
 * "lower" cleaning): ftfy.fix_text, HTML unescaped twice, whitespace collapsed, lower-case; ids =
 * start, BPE ids, end, zero padding to the context length (a longer text is cut, the end id kept last).
 *
 * ftfy.fix_text is redone with ftfy's own tables (text-tables.ts, generated from ftfy): HTML entities,
 * C1 controls, Latin ligatures, character width, curly quotes, line breaks, terminal escapes, control
 * characters, NFC. Not ported: ftfy's mojibake repair (`fix_encoding`, a statistical decoder of text
 * that went through the wrong codec); for text that is not mojibake it changes nothing.
 */
import { gunzipSync } from "fflate";
import { RuntimeInputError } from "./errors.js";
import * as T from "./text-tables.js";

const START_TOKEN = "<start_of_text>";
const END_TOKEN = "<end_of_text>";
const END_OF_WORD = "</w>";
const NUM_MERGES = 49152 - 256 - 2; // merges that bring the vocabulary to 49,152 before the two special tokens

function byteAlphabet(): string[] {
  // one printable character per byte (GPT-2 / CLIP): printable Latin-1 stands for itself, the rest
  // move to code points 256 and up, in byte order
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  let shifted = 256;
  for (let b = 0; b < 256; b++) out.push(String.fromCodePoint(printable(b) ? b : shifted++));
  return out;
}

const charClass = (chars: string) => chars.replace(/[\\\]^-]/g, (c) => "\\" + c);
const STRIP = new RegExp(`^[${charClass(T.ISSPACE)}]+|[${charClass(T.ISSPACE)}]+$`, "gu");
const WHITESPACE = new RegExp(`[${charClass(T.REGEX_WHITESPACE)}]+`, "gu");
const CONTROL = new RegExp(`[${charClass(T.CONTROL_CHARS)}]`, "gu");
const ANSI = /\x1b\[((?:\d|;)*)([a-zA-Z])/g;
const FTFY_ENTITY = /&#?[0-9A-Za-z]{1,24};/g;
const CHARREF = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/gu;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
const INVALID_CODEPOINTS = new Set(T.INVALID_CODEPOINTS);

const translate = (text: string, table: Record<string, string>) =>
  Array.from(text, (c) => (c in table ? table[c] : c)).join("");

/** Python's html.unescape. */
export function htmlUnescape(text: string): string {
  if (!text.includes("&")) return text;
  return text.replace(CHARREF, (_m, s: string) => {
    if (s[0] === "#") {
      const digits = s.replace(/;$/, "");
      const num = s[1] === "x" || s[1] === "X" ? parseInt(digits.slice(2), 16) : parseInt(digits.slice(1), 10);
      if (String(num) in T.INVALID_CHARREFS) return T.INVALID_CHARREFS[String(num)];
      if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) return "\ufffd";
      if (INVALID_CODEPOINTS.has(num)) return "";
      return String.fromCodePoint(num);
    }
    if (s in T.HTML5) return T.HTML5[s];
    const chars = Array.from(s); // the longest name that is a reference, as the standard says
    for (let x = chars.length - 1; x > 1; x--) {
      const name = chars.slice(0, x).join("");
      if (name in T.HTML5) return T.HTML5[name] + chars.slice(x).join("");
    }
    return "&" + s;
  });
}

function ftfyUnescape(text: string): string {
  return text.replace(FTFY_ENTITY, (m) => {
    if (m in T.FTFY_ENTITIES) return T.FTFY_ENTITIES[m];
    if (m.startsWith("&#")) {
      const unescaped = htmlUnescape(m);
      return unescaped.includes(";") ? m : unescaped;
    }
    return m;
  });
}

function ftfySegment(text: string, unescape: boolean): string {
  for (;;) { // ftfy repeats its fixes until nothing changes
    const before = text;
    if (unescape) text = ftfyUnescape(text);
    text = text.replace(/[\x80-\x9f]/g, (c) => T.C1_WINDOWS_1252[c]);
    text = translate(text, T.LIGATURES);
    text = translate(text, T.WIDTH_MAP);
    text = text.replace(/[\u201c-\u201f]/g, '"').replace(/[\u02bc\u2018-\u201b]/g, "'");
    text = text.replace(/\r\n/g, "\n").replace(/[\r\u2028\u2029\u0085]/g, "\n");
    text = text.replace(LONE_SURROGATE, "\ufffd"); // (pairs are one character in JavaScript already)
    text = text.replace(ANSI, "").replace(CONTROL, "");
    text = text.normalize("NFC");
    if (text === before) return text;
  }
}

/** ftfy.fix_text with its default configuration, mojibake repair excepted (see the module comment). */
export function fixText(text: string): string {
  const out: string[] = [];
  let unescape = true; // "auto": HTML is not unescaped from the first line holding a "<" on
  for (const segment of text.match(/[^\n]*\n|[^\n]+$/g) ?? []) {
    if (segment.includes("<")) unescape = false;
    out.push(ftfySegment(segment, unescape));
  }
  return out.join("");
}

export interface TokenizerSpec {
  context_length: number;
  start_id: number;
  end_id: number;
  pad_id: number;
}

export class BpeTokenizer {
  readonly startId: number;
  readonly endId: number;
  private readonly byteChars = byteAlphabet();
  private readonly tokenIds = new Map<string, number>();
  private readonly mergeRank = new Map<string, number>();
  private readonly pieces = new RegExp(
    `${START_TOKEN}|${END_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+`, "giu");
  private readonly cache = new Map<string, string[]>();

  /** `vocabulary`: the gzip-compressed BPE merges file (the bundle's tokenizer/ file). */
  constructor(vocabulary: Uint8Array, readonly contextLength = 77) {
    let lines: string[];
    try {
      lines = new TextDecoder("utf-8", { fatal: true }).decode(gunzipSync(vocabulary)).split("\n");
    } catch (e) {
      throw new RuntimeInputError(`the tokenizer vocabulary is not a gzip-compressed BPE vocabulary: ${e}`);
    }
    const merges = lines.slice(1, 1 + NUM_MERGES).map((line) => line.split(/\s+/).filter(Boolean));
    if (merges.length !== NUM_MERGES || merges.some((m) => m.length !== 2)) {
      throw new RuntimeInputError(`the tokenizer vocabulary is not a CLIP BPE vocabulary (${NUM_MERGES} merges expected)`);
    }
    const base = [...this.byteChars].sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);
    const symbols = [...base, ...base.map((c) => c + END_OF_WORD), ...merges.map((m) => m.join("")), START_TOKEN, END_TOKEN];
    symbols.forEach((s, i) => this.tokenIds.set(s, i));
    merges.forEach((m, rank) => this.mergeRank.set(m[0] + " " + m[1], rank));
    this.startId = this.tokenIds.get(START_TOKEN)!;
    this.endId = this.tokenIds.get(END_TOKEN)!;
  }

  clean(text: string): string {
    text = htmlUnescape(htmlUnescape(fixText(text))).replace(STRIP, "");
    return text.replace(WHITESPACE, " ").replace(STRIP, "").toLowerCase();
  }

  private bpe(word: string): string[] {
    const hit = this.cache.get(word);
    if (hit) return hit;
    const chars = Array.from(word);
    let symbols = [...chars.slice(0, -1), chars[chars.length - 1] + END_OF_WORD];
    while (symbols.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const rank = this.mergeRank.get(symbols[i] + " " + symbols[i + 1]);
        if (rank !== undefined && rank < bestRank) [best, bestRank] = [i, rank];
      }
      if (best < 0) break;
      const [a, b] = [symbols[best], symbols[best + 1]];
      const merged: string[] = [];
      for (let i = 0; i < symbols.length; i++) {
        if (i + 1 < symbols.length && symbols[i] === a && symbols[i + 1] === b) {
          merged.push(a + b);
          i++;
        } else merged.push(symbols[i]);
      }
      symbols = merged;
    }
    this.cache.set(word, symbols);
    return symbols;
  }

  /** BPE ids of a text, without start and end. */
  encode(text: string): number[] {
    const ids: number[] = [];
    const utf8 = new TextEncoder();
    for (const [piece] of this.clean(text).matchAll(this.pieces)) {
      if (piece === START_TOKEN || piece === END_TOKEN) {
        ids.push(this.tokenIds.get(piece)!);
        continue;
      }
      const word = Array.from(utf8.encode(piece), (b) => this.byteChars[b]).join("");
      for (const s of this.bpe(word)) ids.push(this.tokenIds.get(s)!);
    }
    return ids;
  }

  /** Refuses an empty prompt (nothing visible after cleaning) or one longer than the context. */
  check(text: string): void {
    if (!/[^\p{C}\p{Z}]/u.test(this.clean(text))) {
      throw new RuntimeInputError("the text prompt is empty" +
        (text.replace(STRIP, "") ? " (only whitespace, control or format characters)" : ""));
    }
    const tokens = this.encode(text).length;
    if (tokens > this.contextLength - 2) {
      throw new RuntimeInputError(`the text prompt is ${tokens} tokens long; the text encoder takes at most ` +
        `${this.contextLength - 2} (a context of ${this.contextLength} with start and end): shorten it`);
    }
  }

  /** (1, context) int64 ids: start, BPE ids, end, zeros (cut to the context, the end id kept last). */
  ids(text: string): BigInt64Array {
    let ids = [this.startId, ...this.encode(text), this.endId];
    if (ids.length > this.contextLength) ids = [...ids.slice(0, this.contextLength - 1), this.endId];
    const out = new BigInt64Array(this.contextLength);
    ids.forEach((id, i) => (out[i] = BigInt(id)));
    return out;
  }
}
