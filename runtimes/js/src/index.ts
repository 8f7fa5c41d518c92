/**
 * esam3-runtime: EfficientSAM3 toolkit bundles in JavaScript / TypeScript, on any ONNX Runtime
 * (onnxruntime-node, onnxruntime-web, onnxruntime-react-native): the same steps as the toolkit's
 * Python runtime (toolkit/runtime), with the same numbers.
 *
 *   const bundle = await openBundle(urlSource("bundle-cpu/"));     // or openBundleDirectory() in Node
 *   const runtime = ortRuntime(ort);                                 // ort: the app's ONNX Runtime module
 *   const found = await (await Segmenter.create(bundle, runtime)).segment(rgb, "person");
 *   const session = await new Tracker(bundle, runtime).prompt(frames, 0, { points: [[312, 180]] });
 *   for await (const frame of session.propagate()) { ... }
 */
export { Bundle, BundleSource, Manifest, OpenOptions, openBundle, urlSource, sha256Hex, checkRelative } from "./bundle.js";
export { RuntimeInputError } from "./errors.js";
export { MemoryBank, MemoryPlan, frameQuality, useMultimask } from "./memory-bank.js";
export { Detections, resizeBilinear, sigmoid } from "./postprocess.js";
export { PromptCache, parseNpy } from "./prompt-cache.js";
export { RgbImage, preprocessFrame, preprocessImage, resizePillowBicubic, resizeUint8Antialiased } from "./preprocess.js";
export { Box, SegmentOptions, Segmenter, boxesToPrompt } from "./segmenter.js";
export { Runtime, Sessions, ortRuntime } from "./sessions.js";
export { Arr, F32 } from "./tensor.js";
export { BpeTokenizer, fixText, htmlUnescape } from "./tokenizer.js";
export { ClickPrompt, FrameResult, Frames, Tracker, TrackingSession, fromBfloat16, toBfloat16 } from "./tracker.js";
