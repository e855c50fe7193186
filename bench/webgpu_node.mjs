// realm-web's bridge (wasm/src/bridge.mjs, the very one the browser tab runs) on WebGPU in Node:
// dawn.node (npm `webgpu`) as navigator.gpu + onnxruntime-web's WebGPU build, driven by hand-made
// step plans (the step contract the Python core sends): a prompt in 16-token chunks, then batch-1
// greedy decode steps. Reports per-step time, the first process-wide step (shader compilation) and
// the tokens, as JSON. Run on the lent H200 by bench/webgpu_node.sh (next to ../shared/webgpu's
// raw decode loop, the anchor in the same run):
//   node webgpu_node.mjs BRIDGE_MJS CFG_JSON MODEL_DIR OUT_JSON [STEPS]
// PACKED=1 loads the export's packed form (cfg.packed) instead: bench/webgpu_packed.sh.
// KERNELS=1 LORA=DIR: the realm kernels with an adapter (DIR/lora_meta.json and DIR/lora.bin, as
// bench/webgpu_cpu_ref.py writes them) on the request: table entry 1, the LoRA steps.
import fs from "node:fs";
import path from "node:path";

const [bridgePath, cfgPath, modelDir, outPath, stepsArg] = process.argv.slice(2);
const STEPS = Number(stepsArg || 64);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const r3 = (x) => Math.round(x * 1000) / 1000;
const result = { node: process.version };

const { installNavigatorGpu } = await import(path.resolve(path.dirname(process.argv[1]), "dawn_gpu.mjs"));
const gpu = await installNavigatorGpu();
// what a step asks of the GPU: compute dispatches, queue submissions, buffer readbacks (mapAsync:
// each one waits for the GPU), buffer writes; counted on dawn.node's prototypes
const calls = { dispatchWorkgroups: 0, submit: 0, mapAsync: 0, writeBuffer: 0, createBindGroup: 0 };
const count = (proto, name) => {
  const f = proto?.[name];
  if (typeof f !== "function") return;
  proto[name] = function (...a) { calls[name] += 1; return f.apply(this, a); };
};
count(globalThis.GPUComputePassEncoder?.prototype, "dispatchWorkgroups");
count(globalThis.GPUQueue?.prototype, "submit");
count(globalThis.GPUQueue?.prototype, "writeBuffer");
count(globalThis.GPUBuffer?.prototype, "mapAsync");
count(globalThis.GPUDevice?.prototype, "createBindGroup");
const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
result.adapter = adapter ? { vendor: adapter.info.vendor, device: adapter.info.device } : null;

const KERNELS = !!process.env.KERNELS; // realm-web's own kernels (gpu_bridge.mjs) instead of onnxruntime-web
const ort = KERNELS ? null : await import("onnxruntime-web/webgpu");
if (ort) { ort.env.wasm.numThreads = 1; ort.env.logLevel = "warning"; }
// PROFILE=1: onnxruntime-web's per-kernel GPU timestamps (timestamp-query), summed per decode step,
// to tell GPU time from per-dispatch and host cost
const events = [];
let recording = false;
if (process.env.PROFILE && ort) ort.env.webgpu.profiling = { mode: "default", ondata: (d) => { if (recording) events.push(d); } };
const { Bridge } = await import(path.resolve(bridgePath));
const cfg = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
const t0 = performance.now();
let bridge;
if (KERNELS) {
  // the packed export's GGUF blocks as they are, on realm-web's WGSL kernels (no onnxruntime)
  const { GpuBridge } = await import(path.resolve(path.dirname(bridgePath), "gpu_bridge.mjs"));
  const stamps = process.env.PROFILE && adapter.features.has("timestamp-query") ? ["timestamp-query"] : [];
  const { kernelDevice } = await import(path.resolve(path.dirname(bridgePath), "kernels.mjs"));
  const device = await kernelDevice(adapter, stamps);
  device.addEventListener?.("uncapturederror", (e) => console.error("WebGPU error:", e.error?.message));
  const blocks = new Uint8Array(fs.readFileSync(path.join(modelDir, cfg.packed.blocks)));
  bridge = await GpuBridge.create(device, blocks, cfg, process.env.LANES ? { lanes: Number(process.env.LANES) } : {});
  bridge.dec.profile = !!stamps.length;
  if (process.env.LORA) {
    const t1 = performance.now();
    bridge.upload(1, fs.readFileSync(path.join(process.env.LORA, "lora_meta.json"), "utf8"),
                  new Uint8Array(fs.readFileSync(path.join(process.env.LORA, "lora.bin"))));
    result.lora = { upload_ms: r3(performance.now() - t1) };
  }
  result.kernels = { lanes: bridge.dec.LN, upload_ms: r3(bridge.dec.loadMs), memory: bridge.dec.memory() };
} else if (process.env.PACKED) {
  // the compact download's form (what the tab's worker runs): the packed graph, its weights
  // expanded here from the GGUF's blocks (float16 for the fp16 export: packed.mjs `half`)
  const { PackedExpander } = await import(path.resolve(path.dirname(bridgePath), "packed.mjs"));
  const p = cfg.packed;
  const blocks = fs.readFileSync(path.join(modelDir, p.blocks));
  const ex = new PackedExpander(blocks.length, { half: p.element === "f16", derived: p.derived, weightsBytes: p.weightsBytes });
  for (let i = 0; i < blocks.length; i += 1 << 22) ex.push(blocks.subarray(i, i + (1 << 22)));
  const weights = ex.finish();
  result.packed = { graph: p.file, element: p.element, blocks_bytes: p.blocksBytes, weights_bytes: weights.length, expand_ms: r3(ex.expandMs) };
  bridge = await Bridge.create(ort, new Uint8Array(fs.readFileSync(path.join(modelDir, p.file))),
                               { ...cfg, backend: "webgpu", externalData: [{ path: p.weights, data: weights }] });
} else {
  bridge = await Bridge.create(ort, new Uint8Array(fs.readFileSync(path.join(modelDir, cfg.file))), { ...cfg, backend: "webgpu" });
}
result.load_s = r3((performance.now() - t0) / 1000);
result.dtype = cfg.dtype;

const NEW = KERNELS && process.env.LORA ? { adapter: "lora", entry: 1 } : { adapter: null, entry: 0 };
const GREEDY = { temperature: 0, top_k: 0, top_p: 1, min_p: 0, repetition_penalty: 1, logprobs: false, top_logprobs: 0 };
const PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2];
let nextId = 1, firstToken = null;

async function generate() {
  const id = nextId++;
  const times = [], tokens = [];
  let start = 0, first = true;
  const width = JSON.parse(bridge.capabilities()).prefill_width || PROMPT.length;
  for (let at = 0; at < PROMPT.length; at += width) {  // the prompt in chunks, a sample at its end
    const chunk = PROMPT.slice(at, at + width), last = at + width >= PROMPT.length;
    const plan = { seqs: [[id, 0, start, chunk, last ? 1 : 0, []]], ...(first ? { new: [{ id, slot: 0, sampling: GREEDY, ...NEW }] } : {}) };
    first = false;
    const t = performance.now();
    const out = JSON.parse(await bridge.step(JSON.stringify(plan)));
    times.push(performance.now() - t);
    start += chunk.length;
    if (last) tokens.push(out.tokens[id][0]);
  }
  firstToken ??= performance.now(); // since the process started
  const prefill = times.reduce((a, b) => a + b, 0);
  const dec = [];
  for (let k = 0; k < STEPS; k++) {
    const plan = { seqs: [[id, 0, start, [tokens[tokens.length - 1]], 1, []]] };
    const t = performance.now();
    const out = JSON.parse(await bridge.step(JSON.stringify(plan)));
    dec.push(performance.now() - t);
    start += 1;
    tokens.push(out.tokens[id][0]);
  }
  await bridge.step(JSON.stringify({ seqs: [], released: [id] }));
  return { prefill_ms: prefill, decode: dec, tokens };
}

const warm = await generate();  // the first: shader compilation
recording = true;
const before = { ...calls };
const run = await generate();
recording = false;
const chunkWidth = JSON.parse(bridge.capabilities()).prefill_width || PROMPT.length;
const runsPerGen = STEPS + Math.ceil(PROMPT.length / chunkWidth);
result.gpu_calls_per_run = Object.fromEntries(Object.entries(calls).map(([k, v]) => [k, r3((v - before[k]) / runsPerGen)]));
if (process.env.PROFILE && events.length) {
  const ns = (x) => Number(x);
  const byType = {};
  let busy = 0;
  for (const e of events) {
    const dt = (ns(e.endTime) - ns(e.startTime)) / 1e6;
    busy += dt;
    const k = (byType[e.kernelType] ??= { count: 0, ms: 0 });
    k.count += 1;
    k.ms += dt;
  }
  const runs = runsPerGen;
  result.profile = { dispatches: events.length, dispatches_per_run: r3(events.length / runs),
                     gpu_ms_per_run: r3(busy / runs), wall_ms_per_decode_step: r3(median(run.decode)),
                     by_kernel: Object.fromEntries(Object.entries(byType).sort((a, b) => b[1].ms - a[1].ms)
                       .map(([k, v]) => [k, { per_run: r3(v.count / runs), ms_per_run: r3(v.ms / runs) }])) };
}
if (KERNELS && bridge.dec.gpuMs.length) {  // the GPU's own time for each decode step's pass (timestamp-query)
  const g = bridge.dec.gpuMs.slice(-STEPS);
  result.kernels.gpu_ms_per_decode_step = { median: r3(median(g)), min: r3(Math.min(...g)) };
}
result.first_token_since_process_start_ms = r3(firstToken);
result.first_run = { prefill_ms: r3(warm.prefill_ms), first_decode_ms: r3(warm.decode[0]), decode_median_ms: r3(median(warm.decode)) };
result.prefill_ms = r3(run.prefill_ms);
result.decode_median_ms = r3(median(run.decode));
result.decode_mean_ms = r3(run.decode.reduce((a, b) => a + b, 0) / run.decode.length);
result.tok_s = r3(1000 / result.decode_median_ms);
result.tokens = run.tokens;
result.same_tokens_both_runs = JSON.stringify(run.tokens) === JSON.stringify(warm.tokens);
result.bridge_timings = bridge.timings;
console.log(JSON.stringify(result));
fs.writeFileSync(outPath, JSON.stringify(result, null, 1));
process.exit(0);
