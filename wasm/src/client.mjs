// RealmClient: the Node.js (and browser) SDK for a realm-web server: OpenAI-compatible HTTP with
// server-sent events, and the WebSocket protocol of docs/protocol.md.
//
//   import { RealmClient } from "realm-web";
//   const c = new RealmClient({ baseUrl: "http://127.0.0.1:8000", apiKey: "sk-..." });
//   console.log((await c.chat("What is the capital of France?", { temperature: 0 })).text);
//   for await (const d of c.streamChat("Tell me a story")) process.stdout.write(d.text);
//   const ws = await c.websocket();
//   console.log((await ws.generate("What is the capital of France?", { temperature: 0 })).text);
//   ws.close();

const NAMES = { maxTokens: "max_tokens", topP: "top_p", topK: "top_k", minP: "min_p", repetitionPenalty: "repetition_penalty",
                stopTokenIds: "stop_token_ids", ignoreEos: "ignore_eos", includeUsage: null };

/** An error answer from the server: HTTP status (0 on a WebSocket), code, message. */
export class RealmError extends Error {
  constructor(status, code, message, retryAfterS = null) {
    super(`${status || "ws"} ${code}: ${message}`);
    this.name = "RealmError";
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
  }
}

function body(options) {
  const out = {};
  for (const [k, v] of Object.entries(options || {})) {
    if (v === undefined) continue;
    const name = k in NAMES ? NAMES[k] : k;
    if (name) out[name] = v;
  }
  return out;
}

function messages(prompt) {
  return typeof prompt === "string" ? [{ role: "user", content: prompt }] : prompt;
}

async function check(res) {
  if (res.ok) return res.json();
  let err = {};
  try { err = (await res.json()).error || {}; } catch { /* not JSON */ }
  const ra = res.headers.get("retry-after");
  throw new RealmError(res.status, err.code || "http_error", err.message || res.statusText, ra ? Number(ra) : null);
}

export class RealmClient {
  /** @param {{baseUrl?: string, apiKey?: string, model?: string, WebSocket?: any}} [opts] */
  constructor({ baseUrl = "http://127.0.0.1:8000", apiKey = null, model = null, WebSocket = null } = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.apiKey = apiKey;
    this._model = model;
    this._WebSocket = WebSocket;
  }

  _headers() {
    return { "Content-Type": "application/json", ...(this.apiKey ? { Authorization: `Bearer ${this.apiKey}` } : {}) };
  }

  async health() { return (await fetch(`${this.baseUrl}/health`)).json(); }

  async models() {
    const r = await check(await fetch(`${this.baseUrl}/v1/models`, { headers: this._headers() }));
    return r.data.map((m) => m.id);
  }

  async model() {
    if (!this._model) {
      const ids = await this.models();
      if (!ids.length) throw new RealmError(404, "model_not_found", "this API key may use no model");
      this._model = ids[0];
    }
    return this._model;
  }

  async _post(path, payload, signal) {
    return fetch(`${this.baseUrl}${path}`, { method: "POST", headers: this._headers(), body: JSON.stringify(payload), signal });
  }

  /** Chat completion of a user string or a message list; options as in OpenAI (camelCase accepted). */
  async chat(prompt, options = {}) {
    const o = body(options);
    const r = await check(await this._post("/v1/chat/completions", { model: await this.model(), ...o, messages: messages(prompt), stream: false }));
    const c = r.choices[0];
    return { text: c.message.content, finishReason: c.finish_reason, usage: r.usage, raw: r };
  }

  /** Raw text completion (no chat template). */
  async complete(prompt, options = {}) {
    const r = await check(await this._post("/v1/completions", { model: await this.model(), ...body(options), prompt, stream: false }));
    const c = r.choices[0];
    return { text: c.text, finishReason: c.finish_reason, usage: r.usage, raw: r };
  }

  /** Streams {text, index, finishReason} over server-sent events; `options.signal` aborts. */
  async *streamChat(prompt, options = {}) {
    const { signal, ...rest } = options;
    const res = await this._post("/v1/chat/completions",
      { model: await this.model(), ...body(rest), messages: messages(prompt), stream: true }, signal);
    if (!res.ok) await check(res);
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of res.body) {
      buf += decoder.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const ev = JSON.parse(data);
        if (ev.error) throw new RealmError(500, ev.error.code, ev.error.message);
        for (const c of ev.choices || []) {
          const text = c.delta?.content || "";
          if (text || c.finish_reason) yield { text, index: c.index, finishReason: c.finish_reason };
        }
      }
    }
  }

  /** Opens a WebSocket session (many requests in flight, each cancellable). */
  async websocket() {
    const WS = this._WebSocket || globalThis.WebSocket || (await import("ws")).default;
    const url = new URL(`${this.baseUrl}/ws`);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.apiKey) url.searchParams.set("api_key", this.apiKey);
    const session = new RealmSocket(new WS(url.href));
    await session.opened;
    return session;
  }
}

export class RealmSocket {
  constructor(ws) {
    this.ws = ws;
    this._n = 0;
    this._pending = new Map();
    this.opened = new Promise((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = (e) => reject(new RealmError(0, "connect_failed", e?.message || "cannot open the WebSocket"));
    });
    ws.onmessage = (e) => this._frame(JSON.parse(typeof e.data === "string" ? e.data : e.data.toString()));
    ws.onclose = () => {
      for (const p of this._pending.values()) p.push({ status: "error", error: { code: "closed", message: "the socket closed" } });
    };
  }

  _frame(f) { this._pending.get(f.id)?.push(f); }

  _open(fn, params) {
    const id = ++this._n;
    const frames = [];
    let wake = null;
    this._pending.set(id, { push: (f) => { frames.push(f); wake?.(); } });
    this.ws.send(JSON.stringify({ id, function: fn, params }));
    const next = async () => {
      while (!frames.length) await new Promise((r) => { wake = r; });
      wake = null;
      return frames.shift();
    };
    return { id, next };
  }

  async call(fn, params = {}) {
    const { id, next } = this._open(fn, params);
    try {
      const f = await next();
      if (f.status === "error") throw new RealmError(0, f.error.code, f.error.message, f.error.retry_after_s ?? null);
      return f.data;
    } finally { this._pending.delete(id); }
  }

  /** Yields {text, index, tokenId, isFinal} per token; the return value is the final data. Leaving early cancels. */
  async *stream(prompt, options = {}) {
    const params = { ...body(options), messages: messages(prompt) };
    const { id, next } = this._open("generate", params);
    let done = false;
    try {
      for (;;) {
        const f = await next();
        if (f.status === "streaming") {
          yield { text: f.data.text, index: f.data.index, tokenId: f.data.token_id, isFinal: f.data.is_final };
          continue;
        }
        done = true;
        if (f.status === "error") throw new RealmError(0, f.error.code, f.error.message, f.error.retry_after_s ?? null);
        return { text: f.data.text, finishReason: f.data.finish_reason, tokenIds: f.data.token_ids,
                 promptTokenIds: f.data.prompt_token_ids, tokensGenerated: f.data.tokens_generated,
                 promptTokens: f.data.prompt_tokens, timeMs: f.data.time_ms, cancelled: f.status === "cancelled" };
      }
    } finally {
      this._pending.delete(id);
      if (!done && this.ws.readyState === 1) this.ws.send(JSON.stringify({ id: `cancel-${id}`, function: "cancel", params: { id } }));
    }
  }

  async generate(prompt, options = {}) {
    const it = this.stream(prompt, options);
    for (;;) {
      const r = await it.next();
      if (r.done) return r.value;
    }
  }

  health() { return this.call("health"); }
  metadata() { return this.call("metadata"); }
  close() { this.ws.close(); }
}
