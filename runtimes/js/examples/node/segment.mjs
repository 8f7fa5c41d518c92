#!/usr/bin/env node
// Node CLI example: image + prompt -> boxes / scores (stdout, detections.json) and one mask PNG per object.
//   node examples/node/segment.mjs BUNDLE IMAGE.png PROMPT OUT_DIR [--box x0,y0,x1,y1]... [--neg-box ...]
//                                  [--threshold 0.5] [--max-objects N] [--threads N]
// Every error is one line on stderr and exit code 2.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { RuntimeInputError, Segmenter, ortRuntime } from "../../dist/index.js";
import { openBundleDirectory } from "../../dist/node.js";
import { readPng, writeMaskPng } from "./png.mjs";

const USAGE = "usage: segment.mjs BUNDLE IMAGE.png PROMPT OUT_DIR [--box x0,y0,x1,y1] [--neg-box x0,y0,x1,y1] " +
  "[--threshold T] [--max-objects N] [--threads N]";

function parse(argv) {
  const positional = [];
  const options = { boxes: [], positive: [], threads: 2 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new RuntimeInputError(`${arg} needs a value; ${USAGE}`);
      return argv[++i];
    };
    const numbers = (text, count) => {
      const values = text.split(",").map(Number);
      if (values.length !== count || values.some((v) => !Number.isFinite(v))) {
        throw new RuntimeInputError(`${arg}: expected ${count} comma-separated numbers, got ${JSON.stringify(text)}`);
      }
      return values;
    };
    if (arg === "--box" || arg === "--neg-box") {
      options.boxes.push(numbers(value(), 4));
      options.positive.push(arg === "--box");
    } else if (arg === "--threshold") options.threshold = numbers(value(), 1)[0];
    else if (arg === "--max-objects") options.maxObjects = numbers(value(), 1)[0];
    else if (arg === "--threads") options.threads = numbers(value(), 1)[0];
    else if (arg.startsWith("--")) throw new RuntimeInputError(`unknown option ${arg}; ${USAGE}`);
    else positional.push(arg);
  }
  if (positional.length !== 4) throw new RuntimeInputError(USAGE);
  return [positional, options];
}

async function main() {
  const [[bundleDir, imagePath, prompt, out], options] = parse(process.argv.slice(2));
  const bundle = await openBundleDirectory(bundleDir); // manifest + sha256 of every file
  const runtime = ortRuntime(ort, { intraOpNumThreads: options.threads, interOpNumThreads: 1 });
  const segmenter = await Segmenter.create(bundle, runtime);
  let rgb;
  try {
    rgb = readPng(imagePath);
  } catch (e) {
    throw new RuntimeInputError(`cannot read PNG image ${imagePath}: ${e.message}`);
  }
  const found = await segmenter.segment(rgb, prompt, options);
  mkdirSync(out, { recursive: true });
  const objects = [];
  for (let i = 0; i < found.count; i++) {
    const mask = found.masks.subarray(i * rgb.width * rgb.height, (i + 1) * rgb.width * rgb.height);
    writeMaskPng(join(out, `mask_${String(i).padStart(3, "0")}.png`), mask, rgb.width, rgb.height);
    objects.push({ index: i, query: found.queryIndices[i], score: found.scores[i],
      box_xyxy_px: Array.from(found.boxesXyxyPx.subarray(i * 4, i * 4 + 4), (v) => Math.round(v * 1000) / 1000),
      mask: `mask_${String(i).padStart(3, "0")}.png`, mask_area_px: mask.reduce((a, b) => a + b, 0) });
  }
  const weights = bundle.manifest.model.embedded_default ? "embedded default weights (deterministic, NOT trained)" :
    bundle.manifest.model.weights;
  const result = { prompt, weights, objects };
  writeFileSync(join(out, "detections.json"), JSON.stringify(result, null, 2));
  console.log(JSON.stringify(result));
}

main().catch((e) => {
  const message = e instanceof RuntimeInputError ? e.message : `${e.name}: ${e.message}`;
  console.error(`segment.mjs: error: ${message.split("\n").join(" ")}`);
  process.exit(2);
});
