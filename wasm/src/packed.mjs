// The compact download of an fp32 export (realm_web/export/packed.py): the GGUF's quantized blocks,
// expanded here to the exact fp32 weights the graph holds outside itself (its external data).
// A block is q * d + m in float32 with d and m float16, as the exporter dequantizes: q * d is
// exact in float32 (an 11-bit by 8-bit product) and a float64 sum of two float32 values rounds to
// the same float32 as a float32 sum, so a Float32Array store gives the exporter's bytes.
//
// The fp16 export's packed form (`half`) uses the same blocks: each value is made in float32 as
// above, then rounded to float16 (to nearest, ties to even: numpy's astype) at half the offset.
//
// Streaming: `push` bytes as they arrive; each tensor is expanded as soon as its blocks are all
// there, so expansion overlaps the download. `finish()` returns the weights.

const MAGIC = [0x52, 0x57, 0x50, 0x4b]; // "RWPK"
const VERSION = 1;

let HALF = null; // float16 bits -> float32 value, all 65536 of them
export function halfTable() {
  if (HALF) return HALF;
  HALF = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    HALF[h] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15);
  }
  return HALF;
}

export class PackedError extends Error {
  constructor(message) { super(message); this.name = "PackedError"; this.code = "bad_model"; }
}

/** The header of a .blocks file's first bytes: {meta, dataStart}, or null while they are too few. */
export function readHeader(b) {
  if (b.length < 12) return null;
  if (MAGIC.some((m, i) => b[i] !== m)) throw new PackedError("not a realm-web packed weights file (bad magic)");
  const dv = new DataView(b.buffer, b.byteOffset, 12);
  const version = dv.getUint32(4, true), n = dv.getUint32(8, true);
  if (version !== VERSION) throw new PackedError(`packed weights version ${version}; this realm-web reads ${VERSION}`);
  if (b.length < 12 + n) return null;
  return { meta: JSON.parse(new TextDecoder().decode(b.subarray(12, 12 + n))), dataStart: 12 + n + ((8 - ((12 + n) % 8)) % 8) };
}

export class PackedExpander {
  /** @param totalBytes the .blocks file's size (realm.json's blocks_bytes), to hold it in one buffer
   * @param options {half, derived, weightsBytes}: expand to float16 (the fp16 graph's weights;
   * realm.json's element "f16"), then write its `derived` 2-D transposes of expanded tensors (the
   * fp16 graph's explicit lm_head) at their offsets in a weights file of `weightsBytes` */
  constructor(totalBytes, { half = false, derived = [], weightsBytes = null } = {}) {
    this.half = half;
    this.derived = derived;
    this.weightsBytes = weightsBytes;
    this.buf = new Uint8Array(totalBytes);
    this.got = 0;
    this.meta = null;
    this.dataStart = 0;
    this.next = 0; // the next tensor to expand
    this.weights = null;
    this.expandMs = 0;
  }

  /** Take the next bytes of the file (in order). */
  push(chunk) {
    if (this.got + chunk.length > this.buf.length) throw new PackedError(`packed weights: more bytes than the ${this.buf.length} announced`);
    this.buf.set(chunk, this.got);
    this.got += chunk.length;
    if (!this.meta) this._header();
    if (this.meta) this._expandReady();
  }

  _header() {
    const h = readHeader(this.buf.subarray(0, this.got));
    if (!h) return;
    this.meta = h.meta;
    this.dataStart = h.dataStart;
    this.weights = new Uint8Array(this.weightsBytes ?? (this.half ? this.meta.weights_bytes / 2 : this.meta.weights_bytes));
  }

  _expandReady() {
    const ts = this.meta.tensors;
    while (this.next < ts.length) {
      const t = ts[this.next];
      const end = this.dataStart + t.data + t.data_bytes;
      if (end > this.got) return;
      const t0 = performance.now();
      expandTensor(t, this.buf.subarray(this.dataStart + t.data, end), this.weights, this.half);
      this.expandMs += performance.now() - t0;
      this.next++;
    }
  }

  /** The weights (a Uint8Array of weights_bytes), once every byte has been pushed. */
  finish() {
    if (!this.meta || this.next < this.meta.tensors.length || this.got !== this.buf.length) {
      throw new PackedError(`packed weights cut short: ${this.got} of ${this.buf.length} bytes`);
    }
    this.buf = null; // the blocks are no longer needed
    const t0 = performance.now();
    for (const d of this.derived) {
      const src = this.meta.tensors.find((t) => t.name === d.from);
      if (!src || src.shape.length !== 2) throw new PackedError(`derived tensor ${d.name}: no 2-D tensor ${d.from}`);
      const [rows, cols] = src.shape, size = this.half ? 2 : 4;
      if (d.bytes !== rows * cols * size || d.offset + d.bytes > this.weights.length) throw new PackedError(`derived tensor ${d.name}: sizes do not match`);
      const A = this.half ? Uint16Array : Float32Array;
      const from = new A(this.weights.buffer, this.weights.byteOffset + src.offset / (this.half ? 2 : 1), rows * cols);
      const to = new A(this.weights.buffer, this.weights.byteOffset + d.offset, rows * cols);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) to[c * rows + r] = from[r * cols + c];
    }
    this.expandMs += performance.now() - t0;
    return this.weights;
  }
}

/** Expand one tensor's blocks into its place in `weights` (as float16 when `half`). */
export function expandTensor(t, data, weights, half = false) {
  const count = t.bytes / 4;
  let out; // where the float32 values go (a scratch array when they are rounded to float16 after)
  if (t.kind === "raw") {
    if (!half) { weights.set(data, t.offset); return; }
    out = new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
  } else {
    out = half ? new Float32Array(count) : new Float32Array(weights.buffer, weights.byteOffset + t.offset, count);
    expandBlocks(t, data, out);
  }
  if (half) {
    const dst = new Uint16Array(weights.buffer, weights.byteOffset + t.offset / 2, count);
    for (let i = 0; i < count; i++) dst[i] = toHalf(out[i]);
  }
}

function expandBlocks(t, data, out) {
  const half = halfTable();
  const rows = t.rows, cols = t.cols, nb = cols / 32;
  const q4 = t.kind === "q4_1";
  if (!q4 && t.kind !== "q8_0") throw new PackedError(`unknown block kind ${t.kind}`);
  const size = q4 ? 20 : 34;
  if (data.length !== rows * nb * size || out.length !== rows * cols) throw new PackedError(`tensor ${t.name}: sizes do not match`);
  const u16 = (i) => data[i] | (data[i + 1] << 8);
  // element (n, k) goes to n * cols + k, or to k * rows + n when the graph holds the transpose
  const sn = t.transpose ? 1 : cols, sk = t.transpose ? rows : 1;
  let p = 0;
  for (let n = 0; n < rows; n++) {
    for (let b = 0; b < nb; b++, p += size) {
      const d = half[u16(p)];
      let at = n * sn + b * 32 * sk;
      if (q4) {
        const m = half[u16(p + 2)];
        for (let j = 0; j < 16; j++) {
          const byte = data[p + 4 + j];
          out[at + j * sk] = (byte & 15) * d + m;
          out[at + (j + 16) * sk] = (byte >> 4) * d + m;
        }
      } else {
        for (let j = 0; j < 32; j++) {
          const v = data[p + 2 + j];
          out[at + j * sk] = (v > 127 ? v - 256 : v) * d;
        }
      }
    }
  }
}

const F32 = new Float32Array(1), U32 = new Uint32Array(F32.buffer);

/** The float16 bits nearest a float32 value, ties to even (overflow to infinity, NaN kept NaN). */
export function toHalf(v) {
  F32[0] = v;
  const x = U32[0], sign = (x >>> 16) & 0x8000, m = x & 0x7fffff;
  const e = ((x >>> 23) & 0xff) - 112; // float16's biased exponent
  if (e === 143) return sign | 0x7c00 | (m ? 0x200 : 0); // infinity, NaN
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) { // a float16 subnormal (or zero): 24-bit significand down to 10 + e bits
    if (e < -10) return sign;
    const sig = m | 0x800000, shift = 14 - e, tie = 1 << (shift - 1), rem = sig & ((1 << shift) - 1);
    let h = sig >>> shift;
    if (rem > tie || (rem === tie && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (m >>> 13);
  const rem = m & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // a carry into the exponent is right (up to infinity)
  return sign | h;
}
