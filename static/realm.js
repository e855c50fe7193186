// window.realm: realm-web in this tab. The model runs in a Web Worker (worker.mjs) on WebGPU
// or WASM; the Python core drives it there. API:
//   await realm.ready
//   await realm.generate(prompt, {backend, temperature, maxTokens, seed, ...})
//     -> {text, tokenIds, promptTokenIds, finishReason, timings}
//   await realm.stream(prompt, options, (delta) => ...)   // delta: {text, tokenIds, finishReason}
//   realm.stop(); realm.info; realm.onprogress = (p) => ...
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
    this.onprogress = null;
    this.info = null;
    this._n = 0;
    this._pending = new Map();
    this.ready = this._start(defaultBackend());
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
                                       dtype: params.get("dtype") }).then((info) => {
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
    if ("error" in m) p.reject(new Error(m.error)); else p.resolve(m.result);
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
    if (want === "server") throw new Error("the server backend needs `realm-web serve` (not available on this page yet)");
    if (want && want !== this.backend) this.ready = this._start(want);
    await this.ready;
    const { backend, ...rest } = options || {};
    return rest;
  }

  async generate(prompt, options = {}) {
    const opts = await this._backend(options);
    return this._call("generate", { prompt, options: opts });
  }

  async stream(prompt, options = {}, onToken = () => {}) {
    const opts = await this._backend(options);
    return this._call("stream", { prompt, options: opts }, onToken);
  }

  stop() { return this._call("stop", {}); }
  stats() { return this._call("stats", {}); }
}

window.realm = new Realm();
export default window.realm;
