/**
 * Node.js helpers: a bundle directory as a `BundleSource` (links and special files refused, sha256
 * streamed) and `openBundleDirectory`. Models are handed to ONNX Runtime by path, so weights are not
 * copied through JavaScript.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { lstat, readFile, readdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { Bundle, BundleSource, OpenOptions, checkRelative, openBundle } from "./bundle.js";
import { RuntimeInputError } from "./errors.js";

export function directorySource(dir: string): BundleSource {
  const root = resolve(dir);
  /** The file's path, refused unless every step is a plain directory and the end a regular file. */
  const regular = async (rel: string) => {
    checkRelative(root, rel);
    let path = root;
    const parts = rel.split("/");
    for (const [i, part] of parts.entries()) {
      path = join(path, part);
      let info;
      try {
        info = await lstat(path);
      } catch {
        throw new RuntimeInputError(`bundle ${root}: file ${rel} is missing`);
      }
      if (info.isSymbolicLink()) {
        throw new RuntimeInputError(`bundle ${root}: ${rel} passes a symbolic link; a bundle holds regular files only`);
      }
      if (i < parts.length - 1 ? !info.isDirectory() : !info.isFile()) {
        throw new RuntimeInputError(`bundle ${root}: ${rel} is not a regular file`);
      }
    }
    return path;
  };
  return {
    name: root,
    read: async (rel) => new Uint8Array(await readFile(await regular(rel))),
    model: regular,
    async list() {
      const found: string[] = [];
      const walk = async (dir: string, prefix: string) => {
        for (const entry of await readdir(dir, { withFileTypes: true })) { // links are never followed
          const rel = prefix + entry.name;
          if (entry.isSymbolicLink()) {
            throw new RuntimeInputError(`bundle ${root}: ${rel} is a symbolic link; a bundle holds regular files only`);
          }
          if (entry.isDirectory()) await walk(join(dir, entry.name), rel + "/");
          else if (entry.isFile()) found.push(rel);
          else throw new RuntimeInputError(`bundle ${root}: ${rel} is not a regular file or directory`);
        }
      };
      if (!(await lstat(root).catch(() => null))?.isDirectory()) {
        throw new RuntimeInputError(`bundle ${root} is not a directory`);
      }
      await walk(root, "");
      return found;
    },
    async sha256(rel) {
      const hash = createHash("sha256");
      for await (const chunk of createReadStream(await regular(rel))) hash.update(chunk);
      return hash.digest("hex");
    },
  };
}

/** A bundle directory with its manifest checked and (by default) every file's sha256. */
export async function openBundleDirectory(dir: string, options: OpenOptions = {}): Promise<Bundle> {
  if (!(await lstat(dir).catch(() => null))?.isDirectory()) throw new RuntimeInputError(`bundle ${dir} is not a directory`);
  return openBundle(directorySource(dir), options);
}
