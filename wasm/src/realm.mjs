// realm-web in Node.js: the Python core (tokenizer, chat template, scheduler, sampling rules, stop
// strings) runs in Pyodide and drives the model through wasm/src/bridge.mjs on onnxruntime-web
// (engine "wasm") or onnxruntime-node (engine "native": the same InferenceSession/Tensor API over
// native onnxruntime on the CPU). One Realm is one model, one engine and one scheduler: concurrent
// generate()/stream() calls are batched together by the core's continuous-batching scheduler, and
// their decode steps run as one batched session.run.
//
//   import { Realm } from "realm-web";
//   const llm = await Realm.load({ model: "/path/to/model", engine: "wasm" });
//   const r = await llm.generate("What is the capital of France?", { maxTokens: 32 });
//   for await (const d of llm.stream("Tell me a story", { temperature: 0.8, seed: 1 })) process.stdout.write(d.text);
//   await llm.close();
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ADAPTER_CODES, PEFT_FILES, fetchAdapter, loadAdapterFiles } from "./adapters.mjs";
import { Bridge } from "./bridge.mjs";
import { RealmError } from "./client.mjs";
import { Mirror } from "./remote.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const MODEL_FILES = ["realm.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];
export const DEFAULT_MODEL = "smollm2-135m-instruct";

/** An error of the in-process engine (a RealmError with `status` null): `code` is one of
 * "model_not_found", "bad_option", "bad_prompt", "engine_unavailable", "closed", "aborted",
 * "runtime", and for LoRA adapters "bad_adapter" (`field` names what is wrong),
 * "adapter_not_found", "adapter_in_use", "unsupported" (the export has no LoRA graph). */
export class RealmEngineError extends RealmError {
  constructor(code, message, options = {}) {
    super(null, code, message);
    this.message = message;
    this.name = "RealmEngineError";
    this.field = options.field ?? null;
    if (options.cause !== undefined) this.cause = options.cause;
    if (Error.captureStackTrace) Error.captureStackTrace(this, RealmEngineError);
  }
}

const fail = (code, message, cause, field) => new RealmEngineError(code, message, { cause, field });

// Python exception types (realm_web.lora, realm_web.engine) -> error codes
const PY_CODES = { ...ADAPTER_CODES, SamplingError: "bad_option", StructuredError: "bad_option", SpeculativeError: "bad_option", SchedulerError: "bad_prompt",
                   ValueError: "bad_prompt", TypeError: "bad_prompt" };

/** $REALM_WEB_HOME (default ~/.cache/realm-web), as the Python side (realm_web/paths.py). */
export function realmHome() {
  return process.env.REALM_WEB_HOME || path.join(os.homedir(), ".cache", "realm-web");
}

/** Where `realm-web pull` puts the default model. */
export function defaultModelDir() {
  return path.join(realmHome(), "models", DEFAULT_MODEL);
}

function defaultWheel() {
  if (process.env.REALM_WEB_WHEEL) return process.env.REALM_WEB_WHEEL;
  const dist = path.join(here, "..", "dist");
  const whl = fs.existsSync(dist) && fs.readdirSync(dist).filter((f) => /^realm_web-.*\.whl$/.test(f)).sort().pop();
  if (!whl) throw fail("engine_unavailable", `no realm_web core wheel in ${dist}: run \`make web\` (or \`python tools/build_core_wheel.py\`)`);
  return path.join(dist, whl);
}

// -- options ---------------------------------------------------------------------------------

const ENGINES = { wasm: "wasm", native: "cpu", webgpu: "webgpu" }; // engine -> the manifest's name for it (preferred_by)
const isInt = (v) => Number.isSafeInteger(v);
const isNum = (v) => typeof v === "number" && Number.isFinite(v);

const LOAD_OPTIONS = {
  model: (v) => typeof v === "string" && v.length > 0 || "a model directory or an http(s) URL of one (string)",
  engine: (v) => v in ENGINES || `"wasm", "native" or "webgpu"`,
  dtype: (v) => v == null || typeof v === "string" || "an export's dtype (string), e.g. \"fp32\" or \"int4\"",
  threads: (v) => isInt(v) && v >= 1 && v <= 256 || "an integer >= 1",
  maxSlots: (v) => isInt(v) && v >= 1 && v <= 256 || "an integer in [1, 256]",
  maxLength: (v) => v == null || isInt(v) && v >= 2 || "an integer >= 2",
  maxTokensPerStep: (v) => isInt(v) && v >= 1 || "an integer >= 1",
  batching: (v) => typeof v === "boolean" || "a boolean",
  padLoneRows: (v) => typeof v === "boolean" || "a boolean (run a lone decode row with a phantom row)",
  maxLoras: (v) => isInt(v) && v >= 1 && v <= 64 || "an integer in [1, 64] (adapters one step may use)",
  speculative: (v) => v == null || v === "ngram" || (typeof v === "object" && !Array.isArray(v)) ||
    '"ngram" or {method: "ngram", numSpeculativeTokens} (speculative decoding)',
  wheel: (v) => typeof v === "string" || "the path of a realm_web wheel",
  packed: (v) => typeof v === "boolean" || "a boolean (false: download the plain fp32 file, not the packed blocks)",
  onProgress: (v) => typeof v === "function" || "a function ({stage, file, got, total}) => void",
  prefixCaching: (v) => typeof v === "boolean" || "a boolean (keep finished requests' caches for prompts that begin the same way)",
  gpu: (v) => (v && typeof v.requestAdapter === "function") || "a GPU object (navigator.gpu, or dawn.node's create()) for engine \"webgpu\"",
};

// Mirrors window.realm (static/realm.js) and realm_web/web.py: camelCase names of SamplingParams.
const GENERATE_OPTIONS = {
  maxTokens: (v) => isInt(v) && v >= 0 || "an integer >= 0",
  temperature: (v) => isNum(v) && v >= 0 || "a number >= 0 (0: greedy)",
  topP: (v) => isNum(v) && v > 0 && v <= 1 || "a number in (0, 1]",
  topK: (v) => isInt(v) && v >= 0 || "an integer >= 0 (0: no limit)",
  minP: (v) => isNum(v) && v >= 0 && v <= 1 || "a number in [0, 1]",
  repetitionPenalty: (v) => isNum(v) && v > 0 || "a number > 0",
  seed: (v) => v == null || isInt(v) || "an integer",
  stop: (v) => (typeof v === "string" && v !== "") || (Array.isArray(v) && v.every((s) => typeof s === "string" && s !== "")) ||
    "a non-empty string or a list of them",
  stopTokenIds: (v) => Array.isArray(v) && v.every((t) => isInt(t) && t >= 0) || "a list of token ids",
  ignoreEos: (v) => typeof v === "boolean" || "a boolean",
  logprobs: (v) => typeof v === "boolean" || "a boolean",
  topLogprobs: (v) => isInt(v) && v >= 0 && v <= 20 || "an integer in [0, 20]",
  promptLogprobs: (v) => v == null || isInt(v) && v >= 0 && v <= 20 || "null or an integer in [0, 20]",
  responseFormat: (v) => v == null || (typeof v === "object" && !Array.isArray(v) && typeof v.type === "string") ||
    '{type: "text" | "json_object" | "json_schema", json_schema?: {schema}}',
  jsonSchema: (v) => v == null || typeof v === "boolean" || (typeof v === "object" && !Array.isArray(v)) || "a JSON schema (an object)",
  regex: (v) => v == null || typeof v === "string" || "a regex (a string) the whole output must match",
  choice: (v) => v == null || (Array.isArray(v) && v.length > 0 && v.every((s) => typeof s === "string" && s !== "")) ||
    "a non-empty list of non-empty strings (the output is one of them)",
  raw: (v) => typeof v === "boolean" || "a boolean (true: the prompt is plain text, no chat template)",
  system: (v) => typeof v === "string" || "a string (the system message)",
  adapter: (v) => v == null || typeof v === "string" && v !== "" || "the name of a loaded adapter (loadAdapter), or null for the base model",
  signal: (v) => v == null || (typeof v === "object" && "aborted" in v && typeof v.addEventListener === "function") || "an AbortSignal",
};

function check(options, spec, what) {
  if (options == null) return {};
  if (typeof options !== "object" || Array.isArray(options)) throw fail("bad_option", `${what} options must be an object`);
  const out = {};
  for (const [k, v] of Object.entries(options)) {
    if (v === undefined) continue;
    const rule = spec[k];
    if (!rule) throw fail("bad_option", `unknown ${what} option ${JSON.stringify(k)} (known: ${Object.keys(spec).join(", ")})`);
    const ok = rule(v);
    if (ok !== true) throw fail("bad_option", `${what} option ${k} must be ${ok}, got ${describe(v)}`);
    out[k] = v;
  }
  return out;
}

function describe(v) {
  try { return typeof v === "string" ? JSON.stringify(v) : typeof v === "object" && v !== null ? JSON.stringify(v) : String(v); }
  catch { return String(v); }
}

function checkPrompt(prompt) {
  if (typeof prompt === "string") {
    if (!prompt) throw fail("bad_prompt", "the prompt is empty");
    return;
  }
  if (Array.isArray(prompt) && prompt.length > 0) {
    if (prompt.every((t) => isInt(t) && t >= 0)) return; // token ids
    if (prompt.every((m) => m && typeof m === "object" && typeof m.role === "string" && typeof m.content === "string")) return;
  }
  throw fail("bad_prompt", "a prompt is a non-empty string, a list of chat messages ({role, content}) or a list of token ids");
}

/** A Python exception out of Pyodide -> RealmEngineError with its last line as the message. */
function fromPython(e) {
  if (e instanceof RealmError) return e;
  const text = String(e?.message ?? e).trim();
  if (e?.constructor?.name !== "PythonError" && !/Traceback \(most recent call last\)/.test(text))
    return fail("runtime", text, e);
  const last = text.split("\n").filter((l) => l.trim()).pop() || text;
  const m = /^(\w+(?:\.\w+)*): ([\s\S]*)$/.exec(last);
  const type = e.type || (m ? m[1].split(".").pop() : "");
  const msg = m ? m[2] : last;
  return fail(PY_CODES[type] ?? "runtime", msg, e);
}


/** An adapter's files from disk: a PEFT directory's two files, or one GGUF file. */
function readAdapter(source) {
  const src = path.resolve(source);
  let st;
  try { st = fs.statSync(src); } catch { throw fail("bad_adapter", `${src}: no such adapter (a PEFT directory or a GGUF LoRA file)`, undefined, "path"); }
  const data = {};
  if (!st.isDirectory()) {
    data[path.basename(src)] = new Uint8Array(fs.readFileSync(src));
    return { data, gguf: path.basename(src), where: src };
  }
  for (const f of PEFT_FILES) if (fs.existsSync(path.join(src, f))) data[f] = new Uint8Array(fs.readFileSync(path.join(src, f)));
  return { data, gguf: null, where: src };
}

/** A WebGPU device for the realm kernels: navigator.gpu where the runtime has it (Deno, Bun, a
 * shim), else dawn.node (npm `webgpu`). `keep`: the GPU and adapter objects, which must live as long
 * as the device (dawn.node tears its instance down when the GPU object is collected: a
 * `Realm.load({gpu: create([])})` crashed at the first garbage collection after load). */
async function gpuDevice(given = null) {
  let gpu = given ?? globalThis.navigator?.gpu;
  if (!gpu) {
    let m;
    try { m = await import("webgpu"); }
    catch (e) { throw fail("engine_unavailable", "engine \"webgpu\" needs WebGPU in Node: `npm install webgpu` (dawn.node), or a runtime with navigator.gpu", e); }
    Object.assign(globalThis, m.globals);
    gpu = m.create([]);
  }
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw fail("engine_unavailable", "engine \"webgpu\": no WebGPU adapter on this machine (a GPU with Vulkan, Metal or D3D12 drivers)");
  const { kernelDevice } = await import("./kernels.mjs");
  const device = await kernelDevice(adapter);
  return { device, keep: [gpu, adapter], adapter: `${adapter.info?.vendor ?? ""} ${adapter.info?.device || adapter.info?.architecture || ""}`.trim() };
}

// One onnxruntime-web WASM runtime per process: its thread count is fixed when it starts.
let wasmThreads = null;

async function loadOrt(engine, threads) {
  if (engine === "wasm") {
    let ort;
    try { ort = await import("onnxruntime-web"); }
    catch (e) { throw fail("engine_unavailable", `cannot import onnxruntime-web: ${e.message}`, e); }
    if (wasmThreads === null) {
      ort.env.wasm.numThreads = threads;
      wasmThreads = threads;
    } else if (wasmThreads !== threads) {
      throw fail("bad_option", `onnxruntime-web's WASM runtime already runs with ${wasmThreads} thread(s) in this process; ` +
                 `it cannot change (load with threads: ${wasmThreads}, or use another process)`);
    }
    return ort;
  }
  try {
    const m = await import("onnxruntime-node");
    return m.InferenceSession ? m : m.default;
  } catch (e) {
    throw fail("engine_unavailable", "engine \"native\" needs onnxruntime-node " +
               `(ONNXRUNTIME_NODE_INSTALL=skip npm install onnxruntime-node@1.30.0): ${e.message}`, e);
  }
}

// -- the model -------------------------------------------------------------------------------

export class Realm {
  #py; #web; #bridge; #inflight = new Set(); #closed = false; #fatal = null;

  /** Load a model: `model` (default: the directory `realm-web pull` makes; an http(s) URL of a
   * model directory is mirrored under $REALM_WEB_HOME/remote, a packed export downloading as its
   * quantized blocks; `packed: false` takes the plain file, `onProgress` sees the download), `engine` "wasm"
   * (onnxruntime-web, default), "native" (onnxruntime-node) or "webgpu" (realm-web's own WebGPU
   * kernels over the export's GGUF blocks: navigator.gpu, or dawn.node from npm `webgpu`), `dtype` (default: the export the
   * manifest prefers for the engine: wasm fp32/fp16, native int4), `threads`, `maxSlots` (requests
   * that run at once; more wait in the queue), `maxLength`, `maxTokensPerStep` (prefill chunk). */
  static async load(options = {}) {
    const o = check(options, LOAD_OPTIONS, "load");
    const engine = o.engine ?? "wasm";
    const remote = typeof o.model === "string" && /^https?:\/\//i.test(o.model);
    const threads = o.threads ?? (engine === "wasm" ? 1 : Math.min(4, os.availableParallelism?.() ?? os.cpus().length));
    let modelDir, mirror = null, manifest;
    if (remote) {  // a URL: mirrored locally (remote.mjs); a packed export downloads as its blocks
      mirror = await Mirror.open(o.model, realmHome(), fail);
      modelDir = mirror.dir;
      manifest = JSON.parse(mirror.manifestText);
    } else {
      modelDir = path.resolve(o.model ?? defaultModelDir());
      if (!fs.existsSync(modelDir))
        throw fail("model_not_found", `${modelDir}: no such model directory` +
                   (o.model ? "" : " (the default model: run `realm-web pull`, or pass { model: DIR })"));
      const manifestPath = path.join(modelDir, "realm.json");
      if (!fs.existsSync(manifestPath))
        throw fail("model_not_found", `${modelDir}: not a realm-web model directory (no realm.json; \`realm-web export\` makes one)`);
      try { manifest = JSON.parse(fs.readFileSync(manifestPath, "utf8")); }
      catch (e) { throw fail("model_not_found", `${manifestPath}: unreadable manifest (${e.message})`, e); }
    }
    const variants = manifest.variants || {};
    if (o.dtype != null && !(o.dtype in variants))
      throw fail("bad_option", `${o.model ?? modelDir} has no ${o.dtype} export (have: ${Object.keys(variants).sort().join(", ")})`);
    const wheel = o.wheel ?? defaultWheel();
    if (!fs.existsSync(wheel)) throw fail("engine_unavailable", `${wheel}: no such wheel`);

    if (engine === "webgpu" && o.dtype != null && o.dtype !== "fp32")
      throw fail("bad_option", `engine "webgpu" runs the realm kernels over the export's GGUF blocks (dtype "fp32"), not ${o.dtype}`);
    const t0 = performance.now();
    const ort = engine === "webgpu" ? null : await loadOrt(engine, threads);
    let py;
    try {
      const { loadPyodide } = await import("pyodide");
      py = await loadPyodide();
      py.unpackArchive(new Uint8Array(fs.readFileSync(wheel)), "wheel");
    } catch (e) { throw fail("engine_unavailable", `cannot start Pyodide with ${wheel}: ${String(e.message).trim().split("\n").pop()}`, e); }
    py.FS.mkdirTree("/model");
    for (const f of MODEL_FILES) {
      const p = path.join(modelDir, f);
      const b = mirror ? mirror.file(f) : fs.existsSync(p) ? new Uint8Array(fs.readFileSync(p)) : null;
      if (b) py.FS.writeFile(`/model/${f}`, b);
    }
    let web;
    try { web = py.pyimport("realm_web.web"); }
    catch (e) { throw fail("engine_unavailable", `${wheel} holds no usable realm_web core: ${e.message.trim().split("\n").pop()}`, e); }
    let cfg;
    try { cfg = JSON.parse(web.config("/model", ENGINES[engine], engine === "webgpu" ? "fp32" : o.dtype ?? null)); }
    catch (e) { throw fromPython(e); }
    if (engine === "webgpu") return Realm.#loadKernels({ o, py, web, cfg, mirror, modelDir, remote, threads, t0 });
    // a packed export runs from its graph and the expanded weights beside it; locally, where the
    // weights file is there (a mirror), else from the plain file
    let usePacked = false;
    if (mirror) usePacked = (await mirror.fetchWeights(cfg, { packed: o.packed ?? true, onProgress: o.onProgress })).packed;
    else usePacked = (o.packed ?? true) && !!cfg.packed && fs.existsSync(path.join(modelDir, cfg.packed.weights))
      && fs.existsSync(path.join(modelDir, cfg.packed.file));
    if (usePacked) {
      const p = cfg.packed;
      cfg = { ...cfg, file: p.file, lora: cfg.lora && p.loraFile ? { ...cfg.lora, file: p.loraFile, bytes: p.loraBytes } : null };
      if (engine === "wasm") cfg.externalData = [{ path: p.weights, data: new Uint8Array(fs.readFileSync(path.join(modelDir, p.weights))) }];
    }
    const file = path.join(modelDir, cfg.file);
    if (!fs.existsSync(file)) throw fail("model_not_found", `${file}: missing (named by realm.json)`);
    const bytesOrPath = (f) => engine === "native" ? f : new Uint8Array(fs.readFileSync(f));
    const loraFile = cfg.lora ? path.join(modelDir, cfg.lora.file) : null;
    const lazyLora = mirror && loraFile && !usePacked; // a URL model's LoRA twin: fetched when an adapter first runs
    const sources = lazyLora ? { lora: async () => { await mirror.fetchFile(cfg.lora.file, cfg.lora.bytes); return bytesOrPath(loraFile); } }
      : loraFile && fs.existsSync(loraFile) ? { lora: async () => bytesOrPath(loraFile) } : {};
    if (sources.lora && cfg.externalData) {  // read the weights again for the LoRA twin, not kept meanwhile
      const p = cfg.packed;
      sources.externalData = async () => [{ path: p.weights, data: new Uint8Array(fs.readFileSync(path.join(modelDir, p.weights))) }];
    }
    const maxLoras = o.maxLoras ?? 8;
    let bridge;
    try {
      bridge = await Bridge.create(ort, bytesOrPath(file), { ...cfg, threads, batching: o.batching ?? true, maxLoras, padLoneRows: o.padLoneRows }, sources);
    } catch (e) { throw fail("runtime", `cannot load ${file} on ${engine}: ${e.message}`, e); }
    return Realm.#start({ o, py, web, cfg, bridge, engine, t0, maxLoras,
                          extra: { file, modelDir, threads, packed: usePacked, url: remote ? o.model : null,
                                   downloadedBytes: mirror ? mirror.downloaded : 0, padLoneRows: bridge.padLone,
                                   runtime: engine === "wasm" ? `onnxruntime-web ${ort.env.versions?.web ?? ""}`.trim()
                                                              : `onnxruntime-node ${ort.env.versions?.node ?? ""}`.trim() } });
  }

  /** Start the core over `bridge` (calibrating speculation) and make the Realm. */
  static async #start({ o, py, web, cfg, bridge, engine, t0, maxLoras = o.maxLoras ?? 8, extra }) {
    // What the core awaits once per step: the bridge, watched so that a runtime failure (which ends
    // the core's step loop) fails the requests in flight instead of leaving them waiting forever.
    const host = { onError: null, step: (json) => bridge.step(json).catch((e) => { host.onError?.(e); throw e; }),
                   capabilities: () => bridge.capabilities(),
                   upload: (entry, meta, blob) => bridge.upload(entry, meta, blob),
                   setMask: (key, blob) => bridge.setMask(key, blob), clearMasks: () => bridge.clearMasks() };
    let facts, stepCosts = null;
    try {
      facts = JSON.parse(web.start("/model", host, JSON.stringify({ maxSlots: o.maxSlots ?? 8, maxLength: o.maxLength ?? null,
                                                                     maxTokensPerStep: o.maxTokensPerStep ?? 256, maxLoras,
                                                                     backend: ENGINES[engine], dtype: cfg.dtype,
                                                                     speculative: o.speculative ?? null,
                                                                     prefixCaching: o.prefixCaching ?? false })));
      // speculation: the policy learns what a verify row costs here before the first request
      if (facts.speculative) {
        const costs = await bridge.calibrate();
        web.calibrate(costs);
        stepCosts = JSON.parse(costs);
      }
    } catch (e) { await bridge.dispose(); throw fromPython(e); }
    const info = { name: facts.name, engine, dtype: cfg.dtype, maxSlots: o.maxSlots ?? 8, ...extra,
                   prefixCaching: facts.prefix_caching,
                   maxLength: facts.max_length, adapters: facts.adapters, maxLoras, speculative: facts.speculative, stepCosts, vocabSize: cfg.vocabSize, eosTokenIds: facts.eos_token_ids,
                   loadMs: Math.round(performance.now() - t0) };
    const realm = new Realm(py, web, bridge, info);
    host.onError = (e) => realm.#broken(e);
    return realm;
  }

  /** engine "webgpu": realm-web's WGSL kernels (kernels.mjs) over the export's GGUF blocks. */
  static async #loadKernels({ o, py, web, cfg, mirror, modelDir, remote, t0 }) {
    if (!cfg.packed) throw fail("bad_option", `${modelDir}: the export has no packed GGUF blocks (re-export it with \`realm-web pull\`) for engine "webgpu"`);
    const { device, adapter, keep } = await gpuDevice(o.gpu); // before any download: fail fast without a GPU
    if (mirror) await mirror.fetchWeights(cfg, { blocks: true, onProgress: o.onProgress });
    const file = path.join(modelDir, cfg.packed.blocks);
    if (!fs.existsSync(file)) throw fail("model_not_found", `${file}: missing (named by realm.json)`);
    const { GpuBridge } = await import("./gpu_bridge.mjs");
    let bridge;
    try { bridge = await GpuBridge.create(device, new Uint8Array(fs.readFileSync(file)), { ...cfg, maxLoras: o.maxLoras ?? 8 }); }
    catch (e) { throw fail(e.code === "engine_unavailable" ? "engine_unavailable" : "runtime", `cannot load ${file} on WebGPU: ${e.message}`, e); }
    bridge.keep = keep; // alive with the bridge (gpuDevice)
    return Realm.#start({ o, py, web, cfg, bridge, engine: "webgpu", t0,
                          extra: { file, modelDir, threads: 1, packed: true, url: remote ? o.model : null, downloadedBytes: mirror ? mirror.downloaded : 0,
                                   kernels: "realm", adapter, runtime: `realm kernels on WebGPU (${adapter})` } });
  }

  constructor(py, web, bridge, info) {
    if (!web) throw fail("bad_option", "use `await Realm.load(options)`");
    this.#py = py;
    this.#web = web;
    this.#bridge = bridge;
    /** What was loaded: name, engine, dtype, file, threads, maxSlots, maxLength, ... */
    this.info = Object.freeze(info);
  }

  /** Generate a completion: `{text, tokenIds, promptTokenIds, finishReason, usage, timings}`.
   * `prompt`: a user message (through the chat template; `raw: true` for plain text), chat
   * messages `[{role, content}]`, or token ids. Options: maxTokens, temperature, topP, topK, minP,
   * repetitionPenalty, seed, stop, stopTokenIds, ignoreEos, logprobs, topLogprobs, promptLogprobs,
   * responseFormat, jsonSchema, regex, choice, raw, system, adapter
   * (a loaded adapter's name; null: the base model), signal. */
  async generate(prompt, options = {}) {
    const it = this.stream(prompt, options);
    for (;;) {
      const r = await it.next();
      if (r.done) return r.value;
    }
  }

  /** Stream a completion: yields deltas `{text, tokenIds, finishReason}` (the last one has a
   * finishReason); the generator's return value is the completion. Leaving the loop early (break,
   * throw) cancels the request and frees its slot. */
  async *stream(prompt, options = {}) {
    if (this.#closed) throw fail("closed", "this Realm is closed");
    if (this.#fatal) throw this.#fatal;
    const { signal, ...opts } = check(options, GENERATE_OPTIONS, "generate");
    checkPrompt(prompt);
    if (opts.maxTokens !== undefined && opts.maxTokens > this.info.maxLength)
      throw fail("bad_option", `generate option maxTokens must be at most the context length ${this.info.maxLength}, got ${opts.maxTokens}`);
    if (signal?.aborted) throw fail("aborted", "the request was aborted", signal.reason);

    const queue = [];
    let wake = null, settled = false, result, error;
    const req = { cancel: false };
    const notify = () => { const w = wake; wake = null; w?.(); };
    const onAbort = () => { req.cancel = true; notify(); };
    signal?.addEventListener("abort", onAbort, { once: true });
    const onDelta = (json) => { queue.push(JSON.parse(json)); notify(); };
    const cancelled = () => req.cancel;
    let co;
    const done = (async () => {
      try {
        co = this.#web.stream(JSON.stringify(prompt), JSON.stringify(opts), onDelta, cancelled);
        result = JSON.parse(await co);
      } catch (e) {
        error = fromPython(e);
      } finally {
        try { co?.destroy?.(); } catch { /* already gone */ }
        settled = true;
        notify();
      }
    })();
    const fatal = new Promise((resolve) => {
      req.fail = (err) => { error = err; settled = true; notify(); resolve(); };
    });
    req.end = Promise.race([done, fatal]); // the core's answer, or the engine's failure
    this.#inflight.add(req);
    try {
      for (;;) {
        if (queue.length) { yield queue.shift(); continue; }
        if (settled) break;
        if (req.cancel && signal?.aborted) break;
        await new Promise((r) => { wake = r; });
      }
      await req.end;
      if (signal?.aborted) throw fail("aborted", "the request was aborted", signal.reason);
      if (error) throw error;
      if (req.closed) throw fail("closed", "the Realm was closed while this request ran");
      return result;
    } finally {
      req.cancel = true; // early exit: the core aborts the request at its next token
      signal?.removeEventListener("abort", onAbort);
      await req.end;
      this.#inflight.delete(req);
    }
  }

  /** The runtime failed under a step: the core's step loop has ended, so every request in flight
   * fails now, and so does every later call (load the model again). */
  #broken(e) {
    if (this.#fatal) return;
    this.#fatal = fail("runtime", `the engine failed (this Realm can no longer run; load it again): ${e?.message ?? e}`, e);
    for (const r of this.#inflight) r.fail(this.#fatal);
  }

  /** Load a LoRA adapter from `source` (a PEFT directory: adapter_config.json +
   * adapter_model.safetensors, or a GGUF LoRA file; a path, or an http(s) URL fetched with
   * `options.headers`, e.g. a realm-web server's /adapters/{name}/) for `{adapter: name}`;
   * loading a name again replaces it (refused while requests use it). Resolves to {name, rank,
   * targets}; rejects with code "bad_adapter" (`field` names what is wrong), "adapter_in_use" or
   * "unsupported" (the export has no LoRA graph: `realm-web pull` makes one). */
  async loadAdapter(name, source, options = {}) {
    this.#usable();
    if (typeof name !== "string" || !name) throw fail("bad_option", "an adapter needs a non-empty name (string)");
    if (typeof source !== "string" || !source)
      throw fail("bad_option", "loadAdapter(name, source): source is a PEFT directory or a GGUF LoRA file (a path or an http(s) URL)");
    const files = /^https?:\/\//i.test(source) ? await fetchAdapter(source, options.headers, fail) : readAdapter(source);
    return this.#answer(loadAdapterFiles(this.#py, this.#web, name, files), files.where).adapter;
  }

  /** Forget an adapter; rejects with "adapter_not_found", or "adapter_in_use" while requests use it. */
  async unloadAdapter(name) {
    this.#usable();
    this.#answer(this.#web.unload_adapter(String(name)));
  }

  /** The names of the loaded adapters. */
  adapters() {
    this.#usable();
    return JSON.parse(this.#web.adapters());
  }

  #usable() {
    if (this.#closed) throw fail("closed", "this Realm is closed");
    if (this.#fatal) throw this.#fatal;
  }

  #answer(json, where) {
    const r = JSON.parse(json);
    if (!r.error) return r;
    const { type, message, field } = r.error;
    throw fail(PY_CODES[type] ?? "runtime", where && !message.includes(where) ? `${where}: ${message}` : message, undefined, field);
  }

  /** Counters of the engine: steps (awaited calls from Python), runs (session.run calls),
   * batchedRuns, maxRows (most sequences in one run), rowsRun, runMs, sampleMs, gatherMs. */
  stats() {
    return { ...this.#bridge.timings, inflight: this.#inflight.size,
             speculative: this.info.speculative ? JSON.parse(this.#web.speculative_stats()) : null,
             prefix: JSON.parse(this.#web.prefix_stats()) };
  }

  /** Stop every request in flight (they end with an "aborted"/"closed" error) and free the model. */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    for (const r of this.#inflight) { r.cancel = true; r.closed = true; }
    try { this.#web.abort_all(); } catch { /* nothing was started */ }
    await Promise.allSettled([...this.#inflight].map((r) => r.end));
    await this.#bridge.dispose();
    this.#web = null;
    this.#py = null;
  }

  async [Symbol.asyncDispose ?? Symbol.for("Symbol.asyncDispose")]() { await this.close(); }
}
