// PNG <-> RGB bytes with pngjs (decoding is the platform's job; the runtime takes H x W x 3 uint8).
import { readFileSync, writeFileSync } from "node:fs";
import pngjs from "pngjs";

const { PNG } = pngjs;

/** A PNG file as { data: H*W*3 RGB bytes, width, height } (alpha dropped, 16-bit scaled to 8 by pngjs). */
export function readPng(path) {
  const png = PNG.sync.read(readFileSync(path));
  const rgb = new Uint8Array(png.width * png.height * 3);
  for (let p = 0; p < png.width * png.height; p++) rgb.set(png.data.subarray(p * 4, p * 4 + 3), p * 3);
  return { data: rgb, width: png.width, height: png.height };
}

/** Writes a 0/1 mask (H*W) as a black-and-white PNG. */
export function writeMaskPng(path, mask, width, height) {
  const png = new PNG({ width, height, colorType: 0, inputColorType: 0, inputHasAlpha: false });
  png.data = Buffer.from(mask.map((v) => (v ? 255 : 0)));
  writeFileSync(path, PNG.sync.write(png, { colorType: 0, inputColorType: 0, inputHasAlpha: false }));
}
