// transformers.js (npm @huggingface/transformers 4.3.2, its web build and its own onnxruntime-web
// 1.31-dev) on WebGPU in Node over the same dawn.node shim as bench/webgpu_node.mjs, the model of
// bench/transformersjs_model.py (our fp16 graph and weights, as transformers.js loads a model),
// greedy decoding of webgpu_node.mjs's prompt: per-token times from a streamer, twice (the first
// compiles the shaders). Served from a local HTTP server, as transformers.js fetches models.
//   node transformersjs_webgpu.mjs NODE_MODULES MODEL_DIR OUT_JSON [STEPS] [DEVICE]
// DEVICE "webgpu" (default) or "wasm" (to check the harness where there is no GPU).
import fs from "node:fs";
import http from "node:http";
import path from "node:path";

const [nm, modelDir, outPath, stepsArg, deviceArg] = process.argv.slice(2);
const STEPS = Number(stepsArg || 64), DEVICE = deviceArg || "webgpu";
const PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const r3 = (x) => Math.round(x * 1000) / 1000;

const server = http.createServer((req, res) => {  // /smol/<file> -> MODEL_DIR/<file>
  const f = path.join(modelDir, decodeURIComponent(req.url.split("?")[0]).replace(/^\/smol\//, ""));
  if (!f.startsWith(modelDir) || !fs.existsSync(f) || fs.statSync(f).isDirectory()) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { "content-length": fs.statSync(f).size });
  fs.createReadStream(f).pipe(res);
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${server.address().port}/`;

if (DEVICE === "webgpu") {
  const { installNavigatorGpu } = await import(path.resolve(path.dirname(process.argv[1]), "dawn_gpu.mjs"));
  await installNavigatorGpu();
}
// transformers.js's web build takes Node for Node (and then wants onnxruntime-node): let it see
// a browser-like runtime so that it uses onnxruntime-web and navigator.gpu
const release = process.release;
Object.defineProperty(process, "release", { value: { ...release, name: "not-node" }, configurable: true });
const ort = await import(path.join(nm, "onnxruntime-web/dist/ort.webgpu.bundle.min.mjs"));
ort.env.wasm.wasmPaths = path.join(nm, "onnxruntime-web/dist/");
ort.env.wasm.numThreads = 1;
const t = await import(path.join(nm, "@huggingface/transformers/dist/transformers.web.js"));
Object.defineProperty(process, "release", { value: release, configurable: true });
Object.assign(t.env, { allowLocalModels: false, allowRemoteModels: true, remoteHost: base, remotePathTemplate: "{model}/",
                       useBrowserCache: false, useWasmCache: false });
const result = { transformers_js: t.env.version, onnxruntime_web: ort.env.versions?.web, device: DEVICE };
const t0 = performance.now();
const model = await t.AutoModelForCausalLM.from_pretrained("smol", { device: DEVICE, dtype: "fp16", use_external_data_format: true });
result.load_s = r3((performance.now() - t0) / 1000);

async function generate() {
  const times = [], tokens = [];
  const streamer = { put(v) { const ids = v.tolist?.()[0] ?? v[0]; if (ids.length === 1) { times.push(performance.now()); tokens.push(Number(ids[0])); } }, end() {} };
  const input_ids = new t.Tensor("int64", BigInt64Array.from(PROMPT, BigInt), [1, PROMPT.length]);
  const attention_mask = new t.Tensor("int64", new BigInt64Array(PROMPT.length).fill(1n), [1, PROMPT.length]);
  const s = performance.now();
  const out = await model.generate({ input_ids, attention_mask, max_new_tokens: STEPS + 1, do_sample: false, streamer });
  const all = out.tolist()[0].map(Number).slice(PROMPT.length);
  const dec = times.slice(1).map((x, i) => x - times[i]);
  return { first_token_ms: times[0] - s, decode: dec, tokens: tokens.length === all.length ? tokens : all };
}
const warm = await generate();
const run = await generate();
result.first_run = { first_token_ms: r3(warm.first_token_ms), decode_median_ms: r3(median(warm.decode)) };
result.first_token_since_process_start_ms = r3(t0 + result.load_s * 1000 + warm.first_token_ms);
result.prefill_ms = r3(run.first_token_ms);
result.decode_median_ms = r3(median(run.decode));
result.tok_s = r3(1000 / result.decode_median_ms);
result.tokens = run.tokens;
result.same_tokens_both_runs = JSON.stringify(run.tokens) === JSON.stringify(warm.tokens);
console.log(JSON.stringify(result));
fs.writeFileSync(outPath, JSON.stringify(result, null, 1));
process.exit(0);
