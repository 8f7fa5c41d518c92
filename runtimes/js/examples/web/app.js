// The web example: decode the image with a canvas, segment it with the bundle's ONNX files on
// onnxruntime-web (WebAssembly), draw the masks and boxes over it. Query parameters: bundle (URL of a
// bundle folder, default /bundle/), threshold, maxObjects (default 5), image and prompt (run once on load,
// as the headless test does).
import * as ort from "onnxruntime-web";
import { Segmenter, openBundle, ortRuntime, urlSource } from "/dist/index.js";

const params = new URLSearchParams(location.search);
const status = document.getElementById("status");
const canvas = document.getElementById("canvas");
const say = (text) => (status.textContent = text);
const COLOURS = [[255, 64, 64], [64, 160, 255], [64, 220, 96], [255, 200, 0], [200, 80, 255]];

ort.env.wasm.wasmPaths = "/node_modules/onnxruntime-web/dist/";
// threads need a cross-origin isolated page (the example server sends COOP / COEP headers)
ort.env.wasm.numThreads = crossOriginIsolated ? Math.min(navigator.hardwareConcurrency || 1, 4) : 1;

async function decode(blob) {
  const bitmap = await createImageBitmap(blob);
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const rgb = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let p = 0; p < bitmap.width * bitmap.height; p++) rgb.set(rgba.subarray(p * 4, p * 4 + 3), p * 3);
  return { data: rgb, width: bitmap.width, height: bitmap.height };
}

function overlay(rgb, found) {
  const context = canvas.getContext("2d");
  const image = context.getImageData(0, 0, rgb.width, rgb.height);
  const plane = rgb.width * rgb.height;
  for (let i = 0; i < found.count; i++) {
    const colour = COLOURS[i % COLOURS.length];
    for (let p = 0; p < plane; p++) {
      if (!found.masks[i * plane + p]) continue;
      for (let c = 0; c < 3; c++) image.data[p * 4 + c] = (image.data[p * 4 + c] + colour[c]) >> 1;
    }
  }
  context.putImageData(image, 0, 0);
  context.lineWidth = 2;
  context.font = "14px sans-serif";
  for (let i = 0; i < found.count; i++) {
    const [x0, y0, x1, y1] = found.boxesXyxyPx.subarray(i * 4, i * 4 + 4);
    context.strokeStyle = context.fillStyle = `rgb(${COLOURS[i % COLOURS.length].join(",")})`;
    context.strokeRect(x0, y0, x1 - x0, y1 - y0);
    context.fillText(found.scores[i].toFixed(3), x0 + 3, y0 + 15);
  }
}

async function main() {
  document.body.dataset.state = "loading";
  const bundle = await openBundle(urlSource(params.get("bundle") ?? "/bundle/")); // each file checked when fetched
  const segmenter = await Segmenter.create(bundle, ortRuntime(ort));
  const weights = bundle.manifest.model.embedded_default ? "embedded default weights: deterministic, NOT trained, " +
    "so the masks mean nothing" : bundle.manifest.model.weights;
  const run = async (blob, prompt) => {
    document.body.dataset.state = "running";
    say(`segmenting "${prompt}" (${ort.env.wasm.numThreads} thread(s))...`);
    const started = performance.now();
    const rgb = await decode(blob);
    const threshold = params.has("threshold") ? Number(params.get("threshold")) : undefined; // the manifest's
    const found = await segmenter.segment(rgb, prompt, { threshold, maxObjects: Number(params.get("maxObjects") ?? 5) });
    overlay(rgb, found);
    const seconds = (performance.now() - started) / 1000;
    say(`"${prompt}": ${found.count} object(s) in ${seconds.toFixed(1)} s; ${weights}`);
    window.esam3Result = { prompt, seconds, count: found.count, scores: Array.from(found.scores),
      boxes: Array.from(found.boxesXyxyPx), queries: Array.from(found.queryIndices),
      maskAreas: Array.from({ length: found.count }, (_, i) =>
        found.masks.subarray(i * rgb.width * rgb.height, (i + 1) * rgb.width * rgb.height).reduce((a, b) => a + b, 0)) };
    document.body.dataset.state = "done";
  };
  document.getElementById("form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = document.getElementById("file").files[0];
    if (file) run(file, document.getElementById("prompt").value).catch(fail);
  });
  say(`bundle ${bundle.manifest.target.name} ready: choose an image and a prompt`);
  document.body.dataset.state = "ready";
  if (params.get("image")) {
    document.getElementById("prompt").value = params.get("prompt") ?? "person";
    await run(await (await fetch(params.get("image"))).blob(), document.getElementById("prompt").value);
  }
}

function fail(error) {
  say(`error: ${error.message}`);
  window.esam3Error = String(error.message);
  document.body.dataset.state = "error";
}

main().catch(fail);
