// probe: can onnxruntime-web's WebGPU EP capture our decoder's decode step as a graph?
import fs from "node:fs";
const { create, globals } = await import("webgpu");
Object.assign(globalThis, globals);
const gpu = create(["enable-dawn-features=vulkan_enable_f16_on_nvidia"]);
const patchQueue = (proto) => { if (!proto || proto.__p) return; const wb = proto.writeBuffer; proto.writeBuffer = function (...a) { const d = a[2]; if (d instanceof SharedArrayBuffer) a[2] = new Uint8Array(d).slice().buffer; else if (ArrayBuffer.isView(d) && d.buffer instanceof SharedArrayBuffer) a[2] = d.slice(); return wb.apply(this, a); }; proto.__p = true; };
patchQueue(globalThis.GPUQueue?.prototype);
let shown = false;
const patchBind = (proto) => {
  if (proto.__b) return; proto.__b = true;
  const cbg = proto.createBindGroup;
  const fix = (r) => {
    if (r && typeof r === "object" && !("buffer" in r) && typeof r.mapAsync === "function") return { buffer: r };
    if (r && typeof r === "object" && "buffer" in r) return { buffer: r.buffer, ...(r.offset != null ? { offset: Number(r.offset) } : {}), ...(r.size != null ? { size: Number(r.size) } : {}) };
    return r;
  };
  proto.createBindGroup = function (d) {
    try { return cbg.call(this, d); } catch (e) {
      if (!shown) { shown = true; console.log("bind group entries:", JSON.stringify(d.entries.map((x) => ({ binding: x.binding, kind: x.resource?.constructor?.name, keys: x.resource && Object.keys(x.resource), size: String(x.resource?.size), offset: String(x.resource?.offset) })))); }
      return cbg.call(this, { ...d, entries: d.entries.map((x) => ({ ...x, resource: fix(x.resource) })) });
    }
  };
};
const ra = gpu.requestAdapter.bind(gpu);
gpu.requestAdapter = async (o) => { const ad = await ra(o); const rd = ad.requestDevice.bind(ad); ad.requestDevice = async (d) => { const dev = await rd(d); patchQueue(Object.getPrototypeOf(dev.queue)); patchBind(Object.getPrototypeOf(dev)); return dev; }; return ad; };
Object.defineProperty(globalThis, "navigator", { value: { gpu }, configurable: true, writable: true });
const ort = await import("onnxruntime-web/webgpu");
ort.env.wasm.numThreads = 1;
const dir = process.argv[2];
const man = JSON.parse(fs.readFileSync(dir + "/realm.json", "utf8"));
const a = man.architecture, L = a.num_layers, kvh = a.num_kv_heads, hd = a.head_dim;
const model = new Uint8Array(fs.readFileSync(process.argv[3] || dir + "/model_fp16.onnx"));
const out = {};
const T = 64, V = a.vocab_size;
const s = await ort.InferenceSession.create(model, { executionProviders: ["webgpu"], graphOptimizationLevel: "all", enableGraphCapture: true });
const dev = await ort.env.webgpu.device;
const U = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const buf = (bytes) => dev.createBuffer({ size: Math.ceil(bytes / 16) * 16, usage: U });
const gpuT = (type, dims, bytesPer) => { const n = dims.reduce((x, y) => x * y, 1); const b = buf(n * bytesPer); return [ort.Tensor.fromGpuBuffer(b, { dataType: type, dims }), b]; };
const [ids, idsB] = gpuT("int64", [1, 1], 8), [mask, maskB] = gpuT("int64", [1, T], 8), [li, liB] = gpuT("int64", [1, 1], 8);
const [logits, logitsB] = gpuT("float16", [1, 1, V], 2);
const feeds = { input_ids: ids, attention_mask: mask, logits_index: li }, fetches = { logits };
const direct = s.inputNames.includes("seqlens_k");  // the surgery's graph: GQA's lengths fed directly
const [sk, skB] = gpuT("int32", [1], 4), [tl, tlB] = gpuT("int32", [], 4);
if (direct) { feeds.seqlens_k = sk; feeds.total_seq_len = tl; if (!s.inputNames.includes("attention_mask")) delete feeds.attention_mask; }
for (let i = 0; i < L; i++) for (const kv of ["key", "value"]) {
  const [t] = gpuT("float16", [1, kvh, T, hd], 2);
  feeds[`past_key_values.${i}.${kv}`] = t; fetches[`present.${i}.${kv}`] = t;  // one buffer: past and present share it
}
const write = (b, arr) => dev.queue.writeBuffer(b, 0, BigInt64Array.from(arr.map(BigInt)));
const rb = dev.createBuffer({ size: V * 2, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
async function readLogits() {
  const enc = dev.createCommandEncoder(); enc.copyBufferToBuffer(logitsB, 0, rb, 0, V * 2); dev.queue.submit([enc.finish()]);
  await rb.mapAsync(GPUMapMode.READ); const h = new Uint16Array(rb.getMappedRange().slice(0)); rb.unmap(); return h;
}
const f16 = (h) => { const sg = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff; return e === 0 ? sg * f * 2 ** -24 : e === 31 ? NaN : sg * (1 + f / 1024) * 2 ** (e - 15); };
const argmax = (h) => { let bi = 0, bv = -Infinity; for (let k = 0; k < h.length; k++) { const v = f16(h[k]); if (v > bv) { bv = v; bi = k; } } return bi; };
try {
  // one token at a time from position 0 (the prompt too: every step has the same shapes)
  const prompt = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365];
  let tok = prompt[0]; const toks = [], times = [];
  for (let pos = 0; pos < 40; pos++) {
    write(idsB, [pos < prompt.length ? prompt[pos] : tok]);
    write(maskB, Array.from({ length: T }, (_, i) => (i <= pos ? 1 : 0)));
    write(liB, [0]);
    if (direct) { dev.queue.writeBuffer(skB, 0, Int32Array.from([pos])); dev.queue.writeBuffer(tlB, 0, Int32Array.from([T])); }
    const t = performance.now();
    await s.run(feeds, fetches);
    const h = await readLogits();
    times.push(performance.now() - t);
    tok = argmax(h);
    if (pos >= prompt.length - 1) toks.push(tok);
  }
  const m = [...times.slice(5)].sort((x, y) => x - y);
  out.capture = { ok: true, direct, first_ms: times.slice(0, 3), median_ms: m[Math.floor(m.length / 2)], tokens: toks };
} catch (e) { out.capture = { ok: false, error: String(e.message || e).slice(0, 1500) }; }
console.log(JSON.stringify(out, null, 1));
process.exit(0);
