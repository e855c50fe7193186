// The compact download of an fp32 export (realm_web/export/packed.py): the GGUF's quantized blocks,
// expanded here to the exact fp32 weights the graph holds outside itself (its external data).
// A block is q * d + m in float32 with d and m float16, as the exporter dequantizes: q * d is
// exact in float32 (an 11-bit by 8-bit product) and a float64 sum of two float32 values rounds to
// the same float32 as a float32 sum, so a Float32Array store gives the exporter's bytes.
//
// Streaming: `push` bytes as they arrive; each tensor is expanded as soon as its blocks are all
// there, so expansion overlaps the download. `finish()` returns the weights.

const MAGIC = [0x52, 0x57, 0x50, 0x4b]; // "RWPK"
const VERSION = 1;

let HALF = null; // float16 bits -> float32 value, all 65536 of them
function halfTable() {
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

export class PackedExpander {
  /** @param totalBytes the .blocks file's size (realm.json's blocks_bytes), to hold it in one buffer */
  constructor(totalBytes) {
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
    if (this.got < 12) return;
    const b = this.buf;
    if (MAGIC.some((m, i) => b[i] !== m)) throw new PackedError("not a realm-web packed weights file (bad magic)");
    const dv = new DataView(b.buffer, b.byteOffset, 12);
    const version = dv.getUint32(4, true), n = dv.getUint32(8, true);
    if (version !== VERSION) throw new PackedError(`packed weights version ${version}; this realm-web reads ${VERSION}`);
    if (this.got < 12 + n) return;
    this.meta = JSON.parse(new TextDecoder().decode(b.subarray(12, 12 + n)));
    this.dataStart = 12 + n + ((8 - ((12 + n) % 8)) % 8);
    this.weights = new Uint8Array(this.meta.weights_bytes);
  }

  _expandReady() {
    const ts = this.meta.tensors;
    while (this.next < ts.length) {
      const t = ts[this.next];
      const end = this.dataStart + t.data + t.data_bytes;
      if (end > this.got) return;
      const t0 = performance.now();
      expandTensor(t, this.buf.subarray(this.dataStart + t.data, end), this.weights);
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
    return this.weights;
  }
}

/** Expand one tensor's blocks into its place in `weights`. */
export function expandTensor(t, data, weights) {
  if (t.kind === "raw") {
    weights.set(data, t.offset);
    return;
  }
  const half = halfTable();
  const out = new Float32Array(weights.buffer, weights.byteOffset + t.offset, t.bytes / 4);
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
