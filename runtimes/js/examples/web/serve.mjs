#!/usr/bin/env node
// Serves the web example locally: runtimes/js (the page, dist/, node_modules/) at /, a bundle folder at
// /bundle/ and an optional image at /image. Cross-origin isolated (COOP / COEP), so onnxruntime-web
// can use threads. Only files under the two folders (and the one image) are served.
//   node examples/web/serve.mjs BUNDLE [IMAGE] [--port 8000]
import { createReadStream, statSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
  ".wasm": "application/wasm", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg" };

/** Starts the server; resolves to { url, close } once it listens (port 0: any free port). */
export function serve(bundle, image, port = 0) {
  const bundleRoot = resolve(bundle);
  const server = createServer((request, response) => {
    const path = decodeURIComponent(new URL(request.url, "http://localhost").pathname);
    let file;
    if (path === "/image" && image) file = resolve(image);
    else if (path.startsWith("/bundle/")) file = resolve(bundleRoot, "." + path.slice("/bundle".length));
    else file = resolve(ROOT, "." + path);
    const inside = (root) => file === root || file.startsWith(root + sep);
    let info;
    try {
      info = statSync(file);
    } catch {
      info = null;
    }
    if (!(inside(ROOT) || inside(bundleRoot) || file === resolve(image ?? "")) || !info?.isFile()) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { "Content-Type": TYPES[extname(file)] ?? "application/octet-stream",
      "Content-Length": info.size, "Cross-Origin-Opener-Policy": "same-origin",
      "Cross-Origin-Embedder-Policy": "require-corp" });
    createReadStream(file).pipe(response);
  });
  return new Promise((done) => server.listen(port, "127.0.0.1", () =>
    done({ url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() })));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const portAt = args.indexOf("--port");
  const port = portAt >= 0 ? Number(args.splice(portAt, 2)[1]) : 8000;
  if (!args[0]) {
    console.error("usage: serve.mjs BUNDLE [IMAGE] [--port 8000]");
    process.exit(2);
  }
  const { url } = await serve(args[0], args[1], port);
  console.log(`${url}/examples/web/index.html${args[1] ? "?image=/image&prompt=person" : ""}`);
}
