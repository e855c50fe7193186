// realm-web's browser worker: Pyodide (the Python core) + onnxruntime-web (the model), off the
// page's thread so the page never freezes. Messages in: {id, op, args}; out: {id, result} |
// {id, error} | {id, delta} | {progress}.
import { loadPyodide } from "./pyodide/pyodide.mjs";
import { ADAPTER_CODES, fetchAdapter, loadAdapterFiles } from "./realm/adapters.mjs";
import { Bridge } from "./realm/bridge.mjs";
import { download } from "./realm/download.mjs";
import { GpuBridge } from "./realm/gpu_bridge.mjs";
import { archWhy, kernelDevice } from "./realm/kernels.mjs";
import { PackedExpander } from "./realm/packed.mjs";

const MODEL_FILES = ["realm.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];
const CACHE = "realm-web-models-v1";
const MAX_LORAS = 4; // adapters one step may mix (each entry of the table: ~20 MB fp32 at rank 16 here)
let py, web, bridge, info;

const post = (m) => postMessage(m);

async function cachedFetch(url, onBytes) {
  // Model files are cached in the browser (Cache API): a reload does not download them again.
  const cache = await caches.open(CACHE);
  let resp = await cache.match(url);
  const fromCache = !!resp;
  if (!resp) {
    const net = await fetch(url);
    if (!net.ok) throw new Error(`${url}: HTTP ${net.status} (is the model there? run \`realm-web pull\`)`);
    const total = Number(net.headers.get("content-length")) || 0;
    const reader = net.body.getReader();
    const chunks = [];
    let got = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      got += value.length;
      onBytes?.(got, total);
    }
    const blob = new Blob(chunks);
    try {
      await cache.put(url, new Response(blob, { headers: { "content-type": "application/octet-stream",
                                                            "content-length": String(blob.size) } }));
    } catch (e) {  // over the storage quota (private windows): run from memory, download next time
      post({ progress: { stage: "cache", text: `not cached (${e.message}); the next visit downloads again` } });
    }
    return { bytes: new Uint8Array(await blob.arrayBuffer()), fromCache: false };
  }
  const buf = new Uint8Array(await resp.arrayBuffer());
  if (fromCache) onBytes?.(buf.length, buf.length);
  return { bytes: buf, fromCache };
}

/** realm.json's `packed` entry in the names the core's bridge config gives it (ort_web.bridge_config). */
function packedFacts(p) {
  return { file: p.file, bytes: p.bytes, blocks: p.blocks, blocksBytes: p.blocks_bytes, weights: p.weights,
           weightsBytes: p.weights_bytes, element: p.element ?? "f32", derived: p.derived ?? [], loraFile: p.lora_file ?? null, loraBytes: p.lora_bytes ?? 0 };
}

/** A packed export (realm_web/export/packed.py): the graph, and its fp32 weights expanded here
 * from the GGUF's blocks as they arrive, then kept in the Cache API (a reload reads them back). */
async function packedModel(modelUrl, p) {
  const cache = await caches.open(CACHE);
  const weightsUrl = `${modelUrl}/${p.weights}?blocks=${p.blocksBytes}`;
  const graph = await cachedFetch(`${modelUrl}/${p.file}`);
  // the LoRA twin's session needs the weights again: read them back from the cache then
  const again = async () => [{ path: p.weights, data: new Uint8Array(await (await cache.match(weightsUrl)).arrayBuffer()) }];
  const hit = await cache.match(weightsUrl);
  if (hit) {
    post({ progress: { stage: "cache", text: `reading the stored weights (${(p.weightsBytes / 1e6).toFixed(0)} MB)` } });
    const weights = new Uint8Array(await hit.arrayBuffer());
    if (weights.length === p.weightsBytes) return { graph: graph.bytes, weights, fromCache: true, wire: 0, again };
  }
  const ex = new PackedExpander(p.blocksBytes, { half: p.element === "f16", derived: p.derived, weightsBytes: p.weightsBytes });
  const t0 = performance.now();
  await download(`${modelUrl}/${p.blocks}`, p.blocksBytes, (c) => ex.push(c), {
    onBytes: (got, total) => post({ progress: { stage: "download", got, total, file: p.blocks, seconds: (performance.now() - t0) / 1000 } }),
    onRetry: (got) => post({ progress: { stage: "download", got, total: p.blocksBytes, text: `connection lost at ${got} bytes: resuming` } }),
    fail: (m, e) => new Error(m.replace(/try again$/, "reload the page to try again"), { cause: e }) });
  post({ progress: { stage: "expand", text: "expanding the weights" } });
  const weights = ex.finish();
  // stored while the session is made (init awaits `stored` before it answers); until then, and if the
  // store fails, the weights are held here for the LoRA twin
  let held = weights;
  const stored = cache.put(weightsUrl, new Response(weights, { headers: { "content-type": "application/octet-stream",
                                                                          "content-length": String(weights.length) } }))
    .then(() => { held = null; return true; },
          (e) => { post({ progress: { stage: "cache", text: `not stored (${e.message}); the next visit downloads again` } }); return false; });
  return { graph: graph.bytes, weights, fromCache: false, wire: p.blocksBytes + (graph.fromCache ? 0 : graph.bytes.length),
           expandMs: ex.expandMs, downloadSeconds: (performance.now() - t0) / 1000, stored,
           again: async () => (held ? [{ path: p.weights, data: held }] : again()) };
}

/** The packed export's GGUF blocks as they are (for the realm kernels), from the Cache API or
 * downloaded (resumed when the connection breaks) and stored. */
async function packedBlocks(modelUrl, p) {
  const cache = await caches.open(CACHE);
  const url = `${modelUrl}/${p.blocks}`;
  const hit = await cache.match(url);
  if (hit) {
    post({ progress: { stage: "cache", text: `reading the stored weights (${(p.blocksBytes / 1e6).toFixed(0)} MB)` } });
    const blocks = new Uint8Array(await hit.arrayBuffer());
    if (blocks.length === p.blocksBytes) return { blocks, fromCache: true, wire: 0 };
  }
  const blocks = new Uint8Array(p.blocksBytes);
  let at = 0;
  const t0 = performance.now();
  await download(url, p.blocksBytes, (c) => { blocks.set(c, at); at += c.length; }, {
    onBytes: (got, total) => post({ progress: { stage: "download", got, total, file: p.blocks, seconds: (performance.now() - t0) / 1000 } }),
    onRetry: (got) => { at = got; post({ progress: { stage: "download", got, total: p.blocksBytes, text: `connection lost at ${got} bytes: resuming` } }); },
    fail: (m, e) => new Error(m.replace(/try again$/, "reload the page to try again"), { cause: e }) });
  const stored = cache.put(url, new Response(blocks, { headers: { "content-type": "application/octet-stream", "content-length": String(blocks.length) } }))
    .then(() => true, (e) => { post({ progress: { stage: "cache", text: `not stored (${e.message}); the next visit downloads again` } }); return false; });
  return { blocks, fromCache: false, wire: p.blocksBytes, stored, downloadSeconds: (performance.now() - t0) / 1000 };
}

/** Whether realm-web's own WebGPU kernels can run this export (kernels.mjs kernelPlan checks the
 * blocks' tensors when they load): a llama model with its GGUF blocks packed. */
function kernelVariant(manifest) {
  if (archWhy(manifest.architecture)) return null;
  return Object.values(manifest.variants || {}).find((v) => v.dtype === "fp32" && v.packed) || null;
}

async function init(args) {
  const { modelUrl, backend, speculative = null, prefixCaching = true, kernels = null } = args;
  if (backend !== "webgpu" || kernels === "ort" || args.dtype || args.packed === false) return initOrt(args);
  const manifestResp = await fetch(`${modelUrl}/realm.json`);
  if (!manifestResp.ok) throw new Error(`no model at ${modelUrl} (HTTP ${manifestResp.status}): run \`realm-web pull\``);
  const manifestBytes = new Uint8Array(await manifestResp.arrayBuffer());
  const manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
  const variant = kernelVariant(manifest);
  if (!variant) {
    if (kernels === "realm") throw new Error("the realm kernels cannot run this model (they run llama exports with packed GGUF blocks): open the page with ?kernels=ort");
    return initOrt(args);
  }
  return initKernels({ modelUrl, manifestBytes, variant, speculative, prefixCaching });
}

/** WebGPU on realm-web's own kernels (realm/kernels.mjs): the GGUF blocks go to the GPU as they are. */
async function initKernels({ modelUrl, manifestBytes, variant, speculative, prefixCaching }) {
  const t0 = performance.now();
  if (!navigator.gpu) throw new Error("WebGPU is not available in this browser: choose WASM");
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new Error("no WebGPU adapter: choose WASM");
  const facts = packedFacts(variant.packed);
  const blocksReady = packedBlocks(modelUrl, facts);
  blocksReady.catch(() => {});
  await startPython(modelUrl, manifestBytes);
  const cfg = JSON.parse(web.config("/model", "webgpu", variant.dtype));
  const stages = { python_s: (performance.now() - t0) / 1000 };
  const m = await blocksReady;
  stages.weights_s = (performance.now() - t0) / 1000;
  post({ progress: { stage: "session", text: "loading the weights onto the GPU" } });
  const device = await kernelDevice(adapter);
  try {
    bridge = await GpuBridge.create(device, m.blocks, { ...cfg, maxLoras: MAX_LORAS });
  } catch (e) {
    throw new Error(`could not load the model on WebGPU: ${e.message || e} (open the page with ?kernels=ort for onnxruntime-web's WebGPU)`);
  }
  stages.session_s = (performance.now() - t0) / 1000;
  if (m.stored) await m.stored;
  stages.stored_s = (performance.now() - t0) / 1000;
  return finishInit({ cfg, backend: "webgpu", speculative, prefixCaching, t0, stages,
                      extra: { kernels: "realm", lanes: bridge.dec.LN, threads: 1, crossOriginIsolated: self.crossOriginIsolated,
                               fromCache: m.fromCache, packed: true, file: facts.blocks, wireBytes: m.wire,
                               downloadSeconds: m.downloadSeconds ?? null, gpuBytes: bridge.dec.memory() } });
}

/** Pyodide with the core's wheel, the model's small files in /model, `web` the core's module. */
async function startPython(modelUrl, manifestBytes) {
  post({ progress: { stage: "python", text: "starting Python" } });
  py = await loadPyodide({ indexURL: new URL("./pyodide/", import.meta.url).href });
  const wheelName = await (await fetch("./realm/wheel.txt")).text();
  py.unpackArchive(new Uint8Array(await (await fetch(`./realm/${wheelName.trim()}`)).arrayBuffer()), "wheel");
  py.FS.mkdirTree("/model");
  py.FS.writeFile("/model/realm.json", manifestBytes);
  for (const f of MODEL_FILES.slice(1)) {
    const r = await fetch(`${modelUrl}/${f}`);
    if (r.ok) py.FS.writeFile(`/model/${f}`, new Uint8Array(await r.arrayBuffer()));
  }
  web = py.pyimport("realm_web.web");
}

/** Start the core over `bridge` and calibrate speculation: the answer to init. */
async function finishInit({ cfg, backend, speculative, prefixCaching, t0, stages, extra }) {
  info = { ...JSON.parse(web.start("/model", bridge, JSON.stringify({ maxSlots: 2, maxTokensPerStep: 256, backend,
                                                                      dtype: cfg.dtype, maxLoras: MAX_LORAS, prefixCaching,
                                                                      speculative: typeof speculative === "string" && speculative.startsWith("{")
                                                                        ? JSON.parse(speculative) : speculative }))), ...cfg,
           ...extra, stages, loadSeconds: (performance.now() - t0) / 1000 };
  delete info.arch;
  // speculation: the policy learns what a verify row costs on this device before the first request
  if (info.speculative) {
    const costs = await bridge.calibrate();
    web.calibrate(costs);
    info.stepCosts = JSON.parse(costs);
    stages.calibrated_s = info.loadSeconds = (performance.now() - t0) / 1000;
  }
  return info;
}

async function initOrt({ modelUrl, backend, threads = 2, dtype = null, speculative = null, packed = true, prefixCaching = true }) {
  const t0 = performance.now();
  let f16 = true; // WebGPU: whether the adapter can run fp16 shaders
  if (backend === "webgpu") {
    if (!navigator.gpu) throw new Error("WebGPU is not available in this browser: choose WASM");
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) throw new Error("no WebGPU adapter: choose WASM");
    f16 = adapter.features.has("shader-f16");
  }
  const ort = await import(backend === "webgpu" ? "./ort/ort.webgpu.min.mjs" : "./ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  ort.env.wasm.numThreads = self.crossOriginIsolated ? threads : 1;
  // realm.json first: a packed export's weights download and expand while Python starts (they do
  // not depend on it); the variant is the one realm.json names for this backend, as the core's
  // Manifest.variant_for picks it, and the core's own answer is checked against it below
  const manifestResp = await fetch(`${modelUrl}/realm.json`);
  if (!manifestResp.ok) throw new Error(`no model at ${modelUrl} (HTTP ${manifestResp.status}): run \`realm-web pull\``);
  const manifestBytes = new Uint8Array(await manifestResp.arrayBuffer());
  const variants = Object.values(JSON.parse(new TextDecoder().decode(manifestBytes)).variants || {});
  let chosen = dtype ? variants.find((v) => v.dtype === dtype) : variants.find((v) => (v.preferred_by || []).includes(backend)) || variants[0];
  if (!f16 && chosen?.dtype === "fp16") {
    // an fp16 graph on WebGPU needs shader-f16 (SwiftShader, some GPUs lack it): the next of
    // realm_web.export.PREFERENCES["webgpu"], or fail as the user's explicit choice
    if (dtype) throw new Error("this GPU has no shader-f16: the fp16 export cannot run on its WebGPU (choose another dtype or WASM)");
    chosen = ["int8", "int4", "fp32"].map((d) => variants.find((v) => v.dtype === d)).find(Boolean) || chosen;
    dtype = chosen.dtype;
  }
  const early = packed && chosen?.packed ? packedFacts(chosen.packed) : null;
  const weightsReady = early ? packedModel(modelUrl, early) : null;
  weightsReady?.catch(() => {}); // awaited below; a failure is reported there
  await startPython(modelUrl, manifestBytes);
  const cfg = JSON.parse(web.config("/model", backend, dtype));
  const stages = { python_s: (performance.now() - t0) / 1000 }; // seconds since init began, at each stage's end
  const usePacked = packed && cfg.packed;
  if (usePacked && (!early || early.file !== cfg.packed.file)) throw new Error(`realm.json's ${backend} export is not the one the core picked`);
  let bytes, fromCache, wire = 0, timing = {}, externalData = null, weightsAgain = null, storing = null;
  if (usePacked) {
    const m = await weightsReady;
    ({ fromCache, wire } = m);
    bytes = m.graph;
    externalData = [{ path: cfg.packed.weights, data: m.weights }];
    weightsAgain = m.again;
    storing = m.stored;
    timing = { expandMs: m.expandMs ?? null, downloadSeconds: m.downloadSeconds ?? null };
  } else {
    ({ bytes, fromCache } = await cachedFetch(`${modelUrl}/${cfg.file}`, (got, total) =>
      post({ progress: { stage: "download", got, total: total || cfg.bytes, file: cfg.file } })));
    wire = fromCache ? 0 : bytes.length;
  }
  stages.weights_s = (performance.now() - t0) / 1000;
  const file = usePacked ? cfg.packed.file : cfg.file;
  post({ progress: { stage: "session", text: `loading ${file} on ${backend}` } });
  // The LoRA-capable twin of the export, downloaded (and cached) when the first adapter runs;
  // a packed one is a small graph over the same expanded weights.
  const twin = usePacked ? cfg.packed.loraFile && { file: cfg.packed.loraFile, bytes: cfg.packed.loraBytes } : cfg.lora;
  const sources = cfg.lora && twin ? { lora: async () => {
    post({ progress: { stage: "session", text: `loading ${twin.file} for LoRA adapters` } });
    return (await cachedFetch(`${modelUrl}/${twin.file}`, (got, total) =>
      post({ progress: { stage: "download", got, total: total || twin.bytes, file: twin.file } }))).bytes;
  }, ...(weightsAgain ? { externalData: weightsAgain } : {}) } : {};
  try {
    bridge = await Bridge.create(ort, bytes, { ...cfg, maxLoras: MAX_LORAS, externalData }, sources);
  } catch (e) {
    throw new Error(`could not load the model on ${backend}: ${e.message || e}` +
                    (/memory|alloc/i.test(String(e)) ? " (out of memory: try WASM or a smaller export)" : ""));
  }
  stages.session_s = (performance.now() - t0) / 1000;
  if (storing) await storing; // the expanded weights are in the Cache API before the page is ready
  stages.stored_s = (performance.now() - t0) / 1000;
  // The prompt chunk is the engine's to say (the bridge's capabilities: 16 tokens on WebGPU).
  return finishInit({ cfg, backend, speculative, prefixCaching, t0, stages,
                      extra: { kernels: "ort", threads: ort.env.wasm.numThreads, crossOriginIsolated: self.crossOriginIsolated, fromCache,
                               packed: !!usePacked, file, wireBytes: wire, ...timing, ...(backend === "webgpu" ? { shaderF16: f16 } : {}) } });
}

const ops = {
  init,
  async generate({ prompt, options }) {
    return JSON.parse(await web.generate(JSON.stringify(prompt), JSON.stringify(options || {})));
  },
  async stream({ prompt, options }, id) {
    const r = await web.stream(JSON.stringify(prompt), JSON.stringify(options || {}),
                               (d) => post({ id, delta: JSON.parse(d) }));
    return JSON.parse(r);
  },
  async stop() { web?.cancel_all(); return true; },
  // LoRA: `url` is a GGUF LoRA file or a PEFT directory (adapter_config.json + adapter_model.safetensors)
  async loadAdapter({ name, url, headers = {} }) {
    const fail = (code, message, _cause, field) => codeError(code, message, field);
    return answer(loadAdapterFiles(py, web, name, await fetchAdapter(url, headers, fail))).adapter;
  },
  async unloadAdapter({ name }) { answer(web.unload_adapter(name)); return true; },
  async adapters() { return JSON.parse(web.adapters()); },
  async stats() {
    return { ...bridge?.timings, speculative: info?.speculative ? JSON.parse(web.speculative_stats()) : null,
             prefix: web ? JSON.parse(web.prefix_stats()) : null };
  },
  // Per-step timestamps for benchmarks (bench/browser.py): on -> start recording; off -> return them.
  async trace({ on }) {
    const t = bridge?.trace || null;
    if (bridge) bridge.trace = on ? [] : null;
    return { timeOrigin: performance.timeOrigin, steps: t };
  },
};

const PY_CODES = ADAPTER_CODES; // Python exception types -> error codes, as in the Node package

function codeError(code, message, field = null) {
  return Object.assign(new Error(message), { code, field });
}

function answer(json) {
  const r = JSON.parse(json);
  if (r.error) throw codeError(PY_CODES[r.error.type] || "runtime", r.error.message, r.error.field);
  return r;
}

/** An error's code: its own, or from a Python exception's type (the last line of its traceback). */
function errorCode(err) {
  if (err?.code) return err.code;
  const last = String(err?.message || "").trim().split("\n").pop();
  const m = /^(\w+): /.exec(last);
  return (m && PY_CODES[m[1]]) || (err?.type && PY_CODES[err.type]) || null;
}

onmessage = async (e) => {
  const { id, op, args } = e.data;
  try {
    post({ id, result: await ops[op](args || {}, id) });
  } catch (err) {
    const text = String(err?.message || err).trim();
    const message = err?.constructor?.name === "PythonError" ? text.split("\n").pop().replace(/^\w+: /, "") : text;
    post({ id, error: message, code: errorCode(err), field: err?.field ?? null });
  }
};
