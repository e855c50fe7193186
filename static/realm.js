// window.realm: realm-web in this tab. The model runs in a Web Worker (worker.mjs) on WebGPU
// or WASM; the Python core drives it there. API:
//   await realm.ready
//   await realm.generate(prompt, {backend, temperature, maxTokens, seed, ...})
//     -> {text, tokenIds, promptTokenIds, finishReason, timings}
//   await realm.stream(prompt, options, (delta) => ...)   // delta: {text, tokenIds, finishReason}
//   realm.stop(); realm.info; realm.onprogress = (p) => ...
//   await realm.loadAdapter(name, url)   // a LoRA adapter: a PEFT directory URL or a .gguf file
//   await realm.generate(prompt, {adapter: name}); realm.unloadAdapter(name); await realm.adapters()
//   await realm.serverAdapters()          // the adapters of the realm-web server serving this page
//   await realm.setSpeculative("ngram")   // speculative decoding in the tab (or ?speculative=ngram);
//                                         // {method, numSpeculativeTokens}; null: off. Same output.
// On WebGPU the model runs on realm-web's own kernels (realm/kernels.mjs) where the export has its
// GGUF blocks (LoRA adapters too, in their own tables); ?kernels=ort runs onnxruntime-web's WebGPU
// instead.
const params = new URLSearchParams(location.search);

function defaultBackend() {
  const b = params.get("backend");
  if (b) return b;
  return "gpu" in navigator ? "webgpu" : "wasm";
}

class Realm {
  constructor() {
    this.modelUrl = new URL(params.get("model") || "./models/default", location.href).href;
    this.threads = Number(params.get("threads") || Math.min(4, navigator.hardwareConcurrency || 1));
    this.speculative = params.get("speculative") || null;
    this.kernels = params.get("kernels") || null;
    this.onprogress = null;
    this.info = null;
    this._n = 0;
    this._pending = new Map();
    this.backend = null;
    this.ready = this._switch(defaultBackend());
  }

  // Use `backend` from now on: "webgpu" | "wasm" (a worker in this tab) or "server".
  _switch(backend) {
    if (backend !== "server") return this._start(backend);
    this._worker?.terminate();
    this._worker = null;
    this.backend = "server";
    this.server ??= new ServerBackend();
    const ready = this.server.info().then((info) => (this.info = info));
    ready.catch(() => {});
    return ready;
  }

  _start(backend) {
    this._worker?.terminate();
    for (const p of this._pending.values()) p.reject(new Error("the backend was switched"));
    this._pending.clear();
    this.backend = backend;
    this._worker = new Worker(new URL("./worker.mjs", import.meta.url), { type: "module" });
    this._worker.onmessage = (e) => this._message(e.data);
    this._worker.onerror = (e) => { for (const p of this._pending.values()) p.reject(new Error(e.message || "worker failed")); };
    const ready = this._call("init", { modelUrl: this.modelUrl, backend, threads: this.threads,
                                       dtype: params.get("dtype"), speculative: this.speculative, kernels: this.kernels,
                                       packed: params.get("packed") !== "0",
                                       // multi-turn chat: the conversation so far stays in the cache (?prefix_caching=0: off)
                                       prefixCaching: params.get("prefix_caching") !== "0" }).then((info) => {
      this.info = info;
      return info;
    });
    ready.catch(() => {});
    return ready;
  }

  _message(m) {
    if (m.progress) { this.onprogress?.(m.progress); return; }
    const p = this._pending.get(m.id);
    if (!p) return;
    if ("delta" in m) { p.onDelta?.(m.delta); return; }
    this._pending.delete(m.id);
    if ("error" in m) p.reject(Object.assign(new Error(m.error), { code: m.code ?? null, field: m.field ?? null }));
    else p.resolve(m.result);
  }

  _call(op, args, onDelta) {
    const id = ++this._n;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject, onDelta });
      this._worker.postMessage({ id, op, args });
    });
  }

  async _backend(options) {
    const want = options?.backend;
    if (want && want !== this.backend) this.ready = this._switch(want);
    await this.ready;
    const { backend, ...rest } = options || {};
    return rest;
  }

  async generate(prompt, options = {}) {
    const opts = await this._backend(options);
    if (this.backend === "server") return this.server.run(prompt, opts, null);
    return this._call("generate", { prompt, options: opts });
  }

  async stream(prompt, options = {}, onToken = () => {}) {
    const opts = await this._backend(options);
    if (this.backend === "server") return this.server.run(prompt, opts, onToken);
    return this._call("stream", { prompt, options: opts }, onToken);
  }

  /** Load a LoRA adapter into this tab's model: `url` is a PEFT directory (adapter_config.json +
   * adapter_model.safetensors under it) or a GGUF LoRA file. Resolves to {name, rank, targets};
   * rejects with an Error whose `code` is "bad_adapter" (`field` says what), "adapter_in_use" or
   * "unsupported". On the "server" backend the server's own adapters are used instead. */
  /** Speculative decoding for the in-tab model: "ngram", {method: "ngram", numSpeculativeTokens},
   * or null (off). The model starts again with it (its files come from the browser's cache). */
  async setSpeculative(value) {
    this.speculative = value ?? null;
    if (this.backend !== "server") {
      this.ready = this._start(this.backend);
      await this.ready;
    }
    return this.info?.speculative ?? null;
  }

  async loadAdapter(name, url) {
    await this.ready;
    if (this.backend === "server") throw Object.assign(new Error("on the server backend, use the server's adapters (serverAdapters())"), { code: "unsupported" });
    return this._call("loadAdapter", { name, url: new URL(url, location.href).href, headers: authHeaders() });
  }

  async unloadAdapter(name) {
    await this.ready;
    return this._call("unloadAdapter", { name });
  }

  /** Names of the adapters the current backend can run. */
  async adapters() {
    await this.ready;
    if (this.backend === "server") return (await this.serverAdapters()).map((a) => a.id);
    return this._call("adapters", {});
  }

  /** The adapters of the realm-web server that serves this page (its /v1/models entries with a
   * parent), each {id, parent, files}; [] when the page is not served by one. */
  async serverAdapters() {
    try {
      const r = await fetch(new URL("./v1/models", location.href), { headers: authHeaders() });
      if (!r.ok) return [];
      return (await r.json()).data.filter((m) => m.parent);
    } catch { return []; }
  }

  stop() { return this.backend === "server" ? this.server.stop() : this._call("stop", {}); }
  stats() { return this.backend === "server" ? Promise.resolve({}) : this._call("stats", {}); }
}

// The "server" backend: the same page API over `realm-web serve`'s WebSocket protocol
// (docs/protocol.md) on this page's origin; ?api_key=... when the server has tenants.
const OPTION_NAMES = { maxTokens: "max_tokens", topP: "top_p", topK: "top_k", minP: "min_p",
                       repetitionPenalty: "repetition_penalty", stopTokenIds: "stop_token_ids", ignoreEos: "ignore_eos",
                       topLogprobs: "top_logprobs", responseFormat: "response_format", jsonSchema: "guided_json",
                       regex: "guided_regex", choice: "guided_choice" };

function authHeaders() {
  const key = params.get("api_key");
  return key ? { authorization: `Bearer ${key}` } : {};
}

class ServerBackend {
  constructor() {
    this._n = 0;
    this._pending = new Map();
    this._socket = null;
  }

  _connect() {
    if (this._socket) return this._socket;
    const url = new URL("./ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (params.get("api_key")) url.searchParams.set("api_key", params.get("api_key"));
    this._socket = new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.onopen = () => resolve(ws);
      ws.onerror = () => reject(new Error("cannot reach the realm-web server's WebSocket (is this page served by `realm-web serve`?)"));
      ws.onclose = () => {
        this._socket = null;
        for (const p of this._pending.values()) p.reject(new Error("the server closed the connection"));
        this._pending.clear();
      };
      ws.onmessage = (e) => this._frame(JSON.parse(e.data));
    });
    return this._socket;
  }

  _frame(f) {
    const p = this._pending.get(f.id);
    if (!p) return;
    if (f.status === "streaming") { p.onFrame?.(f.data); return; }
    this._pending.delete(f.id);
    if (f.status === "error") p.reject(new Error(`${f.error.code}: ${f.error.message}`));
    else p.resolve(f.data);
  }

  async _send(fn, params, onFrame) {
    const ws = await this._connect();
    const id = ++this._n;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject, onFrame, fn });
      ws.send(JSON.stringify({ id, function: fn, params }));
    });
  }

  async info() {
    const meta = await this._send("metadata", {});
    return { backend: "server", name: meta.model.id, dtype: meta.model.dtype, device: meta.model.device,
             maxLength: meta.model.max_length, file: `${meta.model.device} server` };
  }

  async run(prompt, options, onToken) {
    const p = { temperature: 0 };
    for (const [k, v] of Object.entries(options)) {
      if (k === "adapter") { if (v != null) p.model = v; continue; } // the server names adapters by model
      p[OPTION_NAMES[k] || k] = v;
    }
    if (typeof prompt === "string") p.messages = [{ role: "user", content: prompt }];
    else p.messages = prompt;
    const t0 = performance.now();
    let first = null;
    const d = await this._send("generate", p, (tok) => {
      first ??= performance.now();
      onToken?.({ text: tok.text, tokenIds: [tok.token_id], finishReason: null });
    });
    const t1 = performance.now();
    const n = d.tokens_generated;
    const finishReason = d.finish_reason === "abort" ? "abort" : d.finish_reason;
    onToken?.({ text: "", tokenIds: [], finishReason });
    return { text: d.text, tokenIds: d.token_ids, promptTokenIds: d.prompt_token_ids, finishReason,
             usage: { prompt_tokens: d.prompt_tokens, completion_tokens: n, total_tokens: d.prompt_tokens + n },
             timings: { ttft_s: ((first ?? t1) - t0) / 1e3, total_s: (t1 - t0) / 1e3,
                        decode_tokens_per_s: n > 1 && first ? (n - 1) / ((t1 - first) / 1e3) : 0 } };
  }

  async stop() {
    const ids = [...this._pending].filter(([, p]) => p.fn === "generate").map(([id]) => id);
    await Promise.all(ids.map((id) => this._send("cancel", { id }).catch(() => {})));
  }
}

window.realm = new Realm();
export default window.realm;
