// The anchors of the browser benchmark (bench/browser.py), driven from Playwright through
// window.bench. Everything is served locally: no request leaves the origin.
//   transformers.js: our ONNX file (fp32 model.onnx, or int8 as "q8" model_quantized.onnx)
//                    through the logits_index adapter (ort-adapter.mjs)
//   wllama:          the Q4_1 GGUF the export came from
import { adapterStats } from "./ort-adapter.mjs";

const here = (p) => new URL(p, import.meta.url).href;
let tjs = null, wllama = null;

function tokenTimes() {
  const t = { ids: [], times: [] };
  t.add = (ids) => { const now = performance.now(); for (const id of ids) { t.ids.push(Number(id)); t.times.push(now); } };
  return t;
}

function summary(t0, rec, extra = {}) {
  const n = rec.ids.length;
  const ttft = n ? (rec.times[0] - t0) / 1000 : null;
  const decodeS = n > 1 ? (rec.times[n - 1] - rec.times[0]) / 1000 : null;
  return { ttft_s: ttft, decode_s: decodeS, n_tokens: n, decode_tok_s: n > 1 ? (n - 1) / decodeS : null,
           tokens: rec.ids, ...extra };
}

window.bench = {
  crossOriginIsolated: self.crossOriginIsolated,

  async tjsLoad({ dtype = "fp32", threads = 1, device = "wasm", model: name = "smollm2" }) {
    const T = await import(here("./node_modules/@huggingface/transformers/dist/transformers.web.js"));
    const { ORT_DIST } = await import("onnxruntime-web/webgpu");
    T.env.allowRemoteModels = false;
    T.env.allowLocalModels = true;
    T.env.localModelPath = "/tjs-models/";
    T.env.useBrowserCache = false;
    T.env.backends.onnx.wasm.wasmPaths = { mjs: `${ORT_DIST}ort-wasm-simd-threaded.asyncify.mjs`,
                                          wasm: `${ORT_DIST}ort-wasm-simd-threaded.asyncify.wasm` };
    T.env.backends.onnx.wasm.numThreads = threads;
    const t0 = performance.now();
    const tokenizer = await T.AutoTokenizer.from_pretrained(name);
    const model = await T.AutoModelForCausalLM.from_pretrained(name, { dtype, device });
    tjs = { T, tokenizer, model };
    return { load_s: (performance.now() - t0) / 1000, version: T.env.version, ort: T.env.backends.onnx.versions,
             threads: T.env.backends.onnx.wasm.numThreads, adapter: { ...adapterStats } };
  },

  async tjsRun({ question, maxTokens }) {
    const { T, tokenizer, model } = tjs;
    const rec = tokenTimes();
    let prompt = true;
    const streamer = { put(v) { if (prompt) { prompt = false; return; } rec.add(v.map((r) => r[0])); }, end() {} };
    adapterStats.trace = [];
    const t0 = performance.now();
    // The prompt goes through transformers.js's own chat template and tokenizer, inside the timing.
    const inputs = tokenizer.apply_chat_template([{ role: "user", content: question }],
                                                 { add_generation_prompt: true, return_dict: true });
    await model.generate({ ...inputs, max_new_tokens: maxTokens, do_sample: false, streamer,
                           generation_config: { eos_token_id: null } });  // EOS ignored: every run makes maxTokens
    const t1 = performance.now();
    return summary(t0, rec, { total_s: (t1 - t0) / 1000, prompt_tokens: inputs.input_ids.dims.at(-1),
                              prompt_ids: Array.from(inputs.input_ids.data, Number),
                              ort_run_ms: adapterStats.trace.splice(0) });  // session.run per step (first: prefill)
  },

  async wllamaLoad({ threads = 1, nCtx = 512 }) {
    const { Wllama } = await import(here("./node_modules/@wllama/wllama/esm/index.js"));
    const w = new Wllama({ default: here("./node_modules/@wllama/wllama/esm/wasm/wllama.wasm") },
                         { suppressNativeLog: true, allowOffline: true });
    const t0 = performance.now();
    const blob = await (await fetch("/gguf/model.gguf")).blob();
    await w.loadModel([blob], { n_threads: threads, n_ctx: nCtx, n_gpu_layers: 0, cache_prompt: false });
    wllama = w;
    window.bench.wllama = w;
    return { load_s: (performance.now() - t0) / 1000, threads: w.getNumThreads(), multithread: w.isMultithread(),
             libllama: Wllama.getLibllamaVersion?.() ?? null };
  },

  async wllamaRun({ question, maxTokens }) {
    const rec = tokenTimes();
    let timings = null, usage = null, text = "";
    const t0 = performance.now();
    // llama.cpp applies the GGUF's chat template (jinja) and tokenizes, inside the timing.
    await wllama.createChatCompletion({
      messages: [{ role: "user", content: question }], max_tokens: maxTokens, temperature: 0, top_k: 1,
      ignore_eos: true, cache_prompt: false, return_tokens: true, stream: true,
      onData: (chunk) => {
        const toks = chunk.tokens ?? chunk.choices?.[0]?.tokens;
        const c = chunk.choices?.[0]?.delta?.content ?? "";
        text += c;
        if (toks?.length) rec.add(toks);
        else if (c) rec.add([-1]);
        if (chunk.timings) timings = chunk.timings;
        if (chunk.usage) usage = chunk.usage;
      },
    });
    const t1 = performance.now();
    // one streamed chunk per token (checked against llama.cpp's own count, predicted_n); no ids in the chunks
    return summary(t0, rec, { total_s: (t1 - t0) / 1000, text, engine_timings: timings, usage,
                              tokens: rec.ids.every((x) => x < 0) ? null : rec.ids,
                              prompt_tokens: usage?.prompt_tokens ?? timings?.prompt_n ?? null });
  },
};
window.benchReady = true;
