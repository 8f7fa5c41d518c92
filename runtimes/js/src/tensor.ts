/** The runtime's arrays: a typed array with its dimensions (row-major). bool is Uint8Array (0 / 1),
 * int64 BigInt64Array, as ONNX Runtime's JavaScript API takes and gives them. */
export type Data = Float32Array | Int32Array | BigInt64Array | Uint8Array;

export interface Arr<D extends Data = Data> {
  data: D;
  dims: number[];
}

export type F32 = Arr<Float32Array>;

export const size = (dims: number[]) => dims.reduce((a, b) => a * b, 1);

export function f32(dims: number[], data?: Float32Array): F32 {
  return { data: data ?? new Float32Array(size(dims)), dims };
}

/** Concatenation along `axis` of arrays equal in every other dimension. */
export function concat<D extends Data>(parts: Arr<D>[], axis: number): Arr<D> {
  const dims = [...parts[0].dims];
  dims[axis] = parts.reduce((n, p) => n + p.dims[axis], 0);
  const outer = size(dims.slice(0, axis));
  const Ctor = parts[0].data.constructor as new (n: number) => D;
  const data = new Ctor(size(dims));
  let offset = 0;
  for (let o = 0; o < outer; o++) {
    for (const p of parts) {
      const block = size(p.dims.slice(axis));
      (data as unknown as { set(a: ArrayLike<unknown>, o: number): void }).set(p.data.subarray(o * block, (o + 1) * block) as ArrayLike<unknown>, offset);
      offset += block;
    }
  }
  return { data, dims };
}
