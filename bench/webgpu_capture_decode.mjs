// onnxruntime-web's WebGPU graph capture on a real GPU (Node + dawn.node), an experiment for issue 16:
// the decode-only capture variant of the fp16 export (tools/webgpu_capture_variant.py: seqlens_k and
// total_seq_len as int32 inputs, every node on the GPU), its weights expanded from the packed blocks,
// KV in fixed GPU buffers of T positions shared by past and present (GroupQueryAttention's share-buffer
// mode), every input and output a GPU buffer; decode steps run uncaptured and then captured (replayed),
// logits read back and argmax'd in JS each step. onnxruntime-web 1.30's webgpu build unregisters the
// run's GPU buffers after every run, which breaks replay; bench/webgpu_capture.sh patches that out.
//   node webgpu_capture_decode.mjs ORT_MJS PACKED_MJS MODEL_DIR GRAPH OUT_JSON [STEPS] [T]
import fs from "node:fs";
import path from "node:path";

const [ortPath, packedPath, modelDir, graphFile, outPath, stepsArg, tArg] = process.argv.slice(2);
const STEPS = Number(stepsArg || 64), T = Number(tArg || 256);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const r3 = (x) => Math.round(x * 1000) / 1000;
const { installNavigatorGpu } = await import(path.resolve(path.dirname(process.argv[1]), "dawn_gpu.mjs"));
const gpu = await installNavigatorGpu();
const ort = await import(path.resolve(ortPath));
ort.env.wasm.numThreads = 1;
ort.env.logLevel = "warning";
const { PackedExpander } = await import(path.resolve(packedPath));
const man = JSON.parse(fs.readFileSync(path.join(modelDir, "realm.json"), "utf8"));
const p = man.variants.fp16.packed, a = man.architecture;
const L = a.num_layers, H = a.num_kv_heads, D = a.head_dim, V = a.vocab_size;
const blocks = fs.readFileSync(path.join(modelDir, p.blocks));
const ex = new PackedExpander(blocks.length, { half: true, derived: p.derived, weightsBytes: p.weights_bytes });
for (let i = 0; i < blocks.length; i += 1 << 22) ex.push(blocks.subarray(i, i + (1 << 22)));
const weights = ex.finish();
const graph = new Uint8Array(fs.readFileSync(path.join(modelDir, graphFile)));
const PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2];
const result = { T, steps: STEPS };
for (const capture of [false, true]) {
  const t0 = performance.now();
  const s = await ort.InferenceSession.create(graph, { executionProviders: ["webgpu"], enableGraphCapture: capture,
                                                       externalData: [{ path: p.weights, data: weights }] });
  const load = performance.now() - t0;
  const device = ort.env.webgpu.device;
  const U = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const buf = (n) => device.createBuffer({ size: Math.ceil(n / 16) * 16, usage: U });
  const feeds = {}, fetches = {};
  for (let l = 0; l < L; l++) for (const kv of ["key", "value"]) {
    const b = buf(H * T * D * 2);
    feeds[`past_key_values.${l}.${kv}`] = ort.Tensor.fromGpuBuffer(b, { dataType: "float16", dims: [1, H, T, D] });
    fetches[`present.${l}.${kv}`] = ort.Tensor.fromGpuBuffer(b, { dataType: "float16", dims: [1, H, T, D] });
  }
  const ids = buf(8), sk = buf(4), tot = buf(4), lg = buf(V * 2);
  feeds.input_ids = ort.Tensor.fromGpuBuffer(ids, { dataType: "int64", dims: [1, 1] });
  feeds.seqlens_k = ort.Tensor.fromGpuBuffer(sk, { dataType: "int32", dims: [1] });
  feeds.total_seq_len = ort.Tensor.fromGpuBuffer(tot, { dataType: "int32", dims: [] });
  fetches.logits = ort.Tensor.fromGpuBuffer(lg, { dataType: "float16", dims: [1, 1, V] });
  const read = device.createBuffer({ size: V * 2, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  // Replays keep the dispatch sizes of the captured run, and attention's depend on the total length
  // (a first capture at length 1 attends to the first 64 positions only, for good): so with
  // CAPTURE_AT_T (default on) the captured run is made at the full T positions (the kernels mask by the
  // seqlens_k buffer, read on the GPU at each replay); its writes to position T - 1 are overwritten later.
  const warmups = capture && process.env.CAPTURE_AT_T !== "0" ? 3 : 0;
  for (let w = 0; w < warmups; w++) {
    device.queue.writeBuffer(ids, 0, new BigInt64Array([0n]));
    device.queue.writeBuffer(sk, 0, new Int32Array([T - 1]));
    device.queue.writeBuffer(tot, 0, new Int32Array([T]));
    await s.run(feeds, fetches);
  }
  result[capture ? "capture_runs_at_T" : "plain_warmups"] = warmups;
  const tokens = [], ms = [];
  let last = 0, first = null;
  for (let i = 0; i < PROMPT.length + STEPS; i++) {
    const tok = i < PROMPT.length ? PROMPT[i] : last;
    const t = performance.now();
    device.queue.writeBuffer(ids, 0, new BigInt64Array([BigInt(tok)]));
    device.queue.writeBuffer(sk, 0, new Int32Array([i]));
    device.queue.writeBuffer(tot, 0, new Int32Array([i + 1]));
    await s.run(feeds, fetches);
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(lg, 0, read, 0, V * 2);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const x = new Uint16Array(read.getMappedRange().slice(0));
    read.unmap();
    // argmax over fp16 bits: order-preserving key (negatives reversed)
    let best = 0, bk = -Infinity;
    for (let j = 0; j < V; j++) { const h = x[j], k = h & 0x8000 ? -(h & 0x7fff) : h; if (k > bk) { bk = k; best = j; } }
    const dt = performance.now() - t;
    if (first === null) first = dt;
    if (i >= PROMPT.length - 1) { tokens.push(best); last = best; }
    if (i >= PROMPT.length) ms.push(dt);
  }
  result[capture ? "captured" : "uncaptured"] = { load_ms: r3(load), first_step_ms: r3(first), decode_median_ms: r3(median(ms)),
                                                  decode_mean_ms: r3(ms.reduce((u, v) => u + v, 0) / ms.length),
                                                  tok_s: r3(1000 / median(ms)), tokens };
  await s.release();
}
result.tokens_equal = JSON.stringify(result.captured.tokens) === JSON.stringify(result.uncaptured.tokens);
result.speedup = r3(result.uncaptured.decode_median_ms / result.captured.decode_median_ms);
console.log(JSON.stringify(result));
fs.writeFileSync(outPath, JSON.stringify(result, null, 1));
process.exit(0);
