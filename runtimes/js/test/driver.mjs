// Test driver for tests/test_js_runtime.py: runs the built runtime (dist/) on onnxruntime-node and
// writes what it computed as .npy files / JSON for pytest to compare with the Python runtime.
//   node test/driver.mjs tokenize VOCAB.gz CORPUS.json OUT.json
//   node test/driver.mjs preprocess IN.npy OUT_DIR          (H x W x 3 uint8 in; both paths out)
//   node test/driver.mjs segment BUNDLE IMAGE.png CASES.json OUT_DIR
//   node test/driver.mjs track BUNDLE FRAMES_DIR X,Y OUT_DIR
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { BpeTokenizer, Segmenter, Tracker, ortRuntime, preprocessFrame, preprocessImage } from "../dist/index.js";
import { openBundleDirectory } from "../dist/node.js";
import { readPng } from "../examples/node/png.mjs";

const DTYPES = { Float32Array: "<f4", Uint8Array: "|u1", Int32Array: "<i4" };

function saveNpy(path, data, shape) {
  let header = `{'descr': '${DTYPES[data.constructor.name]}', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  header += " ".repeat(63 - ((header.length + 10) % 64)) + "\n";
  const head = Buffer.alloc(10);
  head.write("\x93NUMPY", 0, "latin1");
  head.writeUInt8(1, 6);
  head.writeUInt16LE(header.length, 8);
  writeFileSync(path, Buffer.concat([head, Buffer.from(header, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

function loadNpyU8(path) { // H x W x 3 uint8, C order (what numpy.save writes for the test's images)
  const buf = readFileSync(path);
  const len = buf.readUInt16LE(8);
  const shape = /'shape': \((\d+), (\d+), 3\)/.exec(buf.toString("latin1", 10, 10 + len)).slice(1).map(Number);
  return { data: new Uint8Array(buf.buffer, buf.byteOffset + 10 + len, shape[0] * shape[1] * 3), height: shape[0], width: shape[1] };
}

const runtime = () => ortRuntime(ort, { intraOpNumThreads: Number(process.env.ESAM3_THREADS ?? 2), interOpNumThreads: 1 });
const [command, ...args] = process.argv.slice(2);

if (command === "tokenize") {
  const [vocab, corpus, out] = args;
  const tokenizer = new BpeTokenizer(readFileSync(vocab));
  const rows = JSON.parse(readFileSync(corpus, "utf8")).map((text) => {
    let error = null;
    try { tokenizer.check(text); } catch (e) { error = e.message; }
    return { ids: Array.from(tokenizer.ids(text), Number), clean: tokenizer.clean(text), error };
  });
  writeFileSync(out, JSON.stringify(rows));
} else if (command === "preprocess") {
  const [input, out] = args;
  const rgb = loadNpyU8(input);
  const spec = { image_size: 1008, scale: 1 / 255, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] };
  saveNpy(join(out, "image.npy"), preprocessImage(rgb, spec), [1, 3, 1008, 1008]);
  saveNpy(join(out, "frame.npy"), preprocessFrame(rgb, spec), [1, 3, 1008, 1008]);
} else if (command === "segment") {
  const [dir, image, cases, out] = args;
  const bundle = await openBundleDirectory(dir);
  const segmenter = await Segmenter.create(bundle, runtime());
  const rgb = readPng(image);
  for (const { name, prompt, boxes, positive, threshold } of JSON.parse(readFileSync(cases, "utf8"))) {
    const found = await segmenter.segment(rgb, prompt, { boxes, positive, threshold });
    mkdirSync(join(out, name), { recursive: true });
    const n = found.count;
    saveNpy(join(out, name, "boxes_xyxy_px.npy"), found.boxesXyxyPx, [n, 4]);
    saveNpy(join(out, name, "scores.npy"), found.scores, [n]);
    saveNpy(join(out, name, "query_indices.npy"), found.queryIndices, [n]);
    saveNpy(join(out, name, "masks.npy"), found.masks, [n, found.height, found.width]);
    saveNpy(join(out, name, "mask_probs.npy"), found.maskProbs, [n, found.height, found.width]);
  }
  writeFileSync(join(out, "loads.json"), JSON.stringify(segmenter.sessions.loads));
} else if (command === "track") {
  const [dir, framesDir, click, out] = args;
  const bundle = await openBundleDirectory(dir);
  const files = readdirSync(framesDir).filter((f) => f.endsWith(".png")).sort()
    .map((f) => join(framesDir, f));
  const first = readPng(files[0]);
  const frames = { count: files.length, width: first.width, height: first.height, rgb: (i) => readPng(files[i]) };
  const tracker = new Tracker(bundle, runtime());
  const session = await tracker.prompt(frames, 0, { points: [click.split(",").map(Number)], labels: [1] });
  const scores = {};
  for await (const result of session.propagate()) {
    saveNpy(join(out, `frame${result.index}.npy`), result.masks, [1, frames.height, frames.width]);
    scores[result.index] = result.objectScoreLogits[0];
  }
  writeFileSync(join(out, "scores.json"), JSON.stringify(scores));
} else {
  console.error(`driver: unknown command ${command}`);
  process.exit(2);
}
