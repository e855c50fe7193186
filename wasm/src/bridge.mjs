// The onnxruntime-web side of realm-web's `ort_web` engine.
//
// The Python core (scheduler, tokenizer, sampling parameters, stop rules) runs in Pyodide and
// calls `step(planJson)` once per step. This module owns what must stay out of Python: the ORT
// session, each KV slot's tensors (on the GPU with WebGPU: outputs stay in GPU buffers and the
// replaced ones are disposed) and the token-selection kernel over the logits, which never cross
// into Python. It implements no scheduling, tokenization or stop rule.
//
// The same code drives onnxruntime-web (backend "wasm" or "webgpu") and onnxruntime-node (backend
// "cpu": the same InferenceSession/Tensor API over native onnxruntime).
//
// Batched decode (CPU backends): when a step decodes one token for several sequences, they run
// as ONE session.run over a batch of rows. Their caches live in shared tensors of shape (rows,
// kv_heads, width, head_dim), right-padded: the attention mask gives each row its own length,
// so GroupQueryAttention reads and appends each row at that row's own position (as the native
// engine's padded batches do). The batch's `present` outputs are the next step's `past`; rows are
// regathered (copied) only when the set of decoding sequences changes.

const EMPTY = { float32: () => new Float32Array(0), float16: () => new Uint16Array(0) };

export class Bridge {
  /** @param ort the onnxruntime-web module; @param model ONNX bytes; @param cfg from realm.json */
  static async create(ort, model, cfg) {
    const backend = cfg.backend || "wasm";
    const providers = { webgpu: ["webgpu", "wasm"], cpu: ["cpu"] };
    const opts = { executionProviders: providers[backend] || ["wasm"], graphOptimizationLevel: "all" };
    if (backend === "cpu" && cfg.threads) Object.assign(opts, { intraOpNumThreads: cfg.threads, interOpNumThreads: 1 });
    if (backend === "webgpu") {
      opts.preferredOutputLocation = {};
      for (let i = 0; i < cfg.numLayers; i++)
        for (const kv of ["key", "value"]) opts.preferredOutputLocation[`present.${i}.${kv}`] = "gpu-buffer";
    }
    const session = await ort.InferenceSession.create(model, opts);
    return new Bridge(ort, session, { ...cfg, backend });
  }

  constructor(ort, session, cfg) {
    this.ort = ort;
    this.session = session;
    this.cfg = cfg;
    this.slots = new Map(); // slot -> {length, past: {name: Tensor}, row, rows}: row `row` of `rows`
    this.batching = cfg.batching ?? cfg.backend !== "webgpu";
    this.timings = { steps: 0, runs: 0, batchedRuns: 0, maxRows: 0, rowsRun: 0, runMs: 0, sampleMs: 0, gatherMs: 0 };
    this.trace = null; // an array to record [enter, runStart, runEnd, exit] (ms since timeOrigin) per step
  }

  pastFor(slot, start) {
    const { numLayers, kvHeads, headDim, kvDtype } = this.cfg;
    let st = this.slots.get(slot);
    if (start === 0 && st) { this.release(slot); st = undefined; }
    if (!st) {
      if (start !== 0) throw new Error(`slot ${slot} holds no cache but the step starts at ${start}`);
      const past = {};
      for (let i = 0; i < numLayers; i++)
        for (const kv of ["key", "value"])
          past[`past_key_values.${i}.${kv}`] = new this.ort.Tensor(kvDtype, EMPTY[kvDtype](), [1, kvHeads, 0, headDim]);
      st = { length: 0, past, row: 0, rows: 1 };
      this.slots.set(slot, st);
    }
    if (st.length !== start) throw new Error(`slot ${slot} holds ${st.length} tokens but the step starts at ${start}`);
    if (st.rows > 1) this.gather([slot]); // leaves a batch: its own cache again
    return st;
  }

  /** Copy the caches of `slots` (in this order) into new shared tensors, right-padded to the
   * longest; each slot's state then points at its row. CPU tensors only. */
  gather(slots) {
    const t0 = performance.now();
    const { numLayers, kvHeads: H, headDim: D, kvDtype } = this.cfg;
    const sts = slots.map((s) => this.slots.get(s));
    const B = sts.length, W = Math.max(...sts.map((st) => st.length));
    const past = {};
    for (let i = 0; i < numLayers; i++)
      for (const kv of ["key", "value"]) {
        const name = `past_key_values.${i}.${kv}`;
        const first = sts[0].past[name].data;
        const dst = new first.constructor(B * H * W * D);
        sts.forEach((st, b) => {
          const src = st.past[name], sw = src.dims[2], data = src.data;
          for (let h = 0; h < H; h++) {
            const from = ((st.row * H + h) * sw) * D;
            dst.set(data.subarray(from, from + st.length * D), ((b * H + h) * W) * D);
          }
        });
        past[name] = new this.ort.Tensor(kvDtype, dst, [B, H, W, D]);
      }
    sts.forEach((st, b) => Object.assign(st, { past, row: b, rows: B }));
    this.timings.gatherMs += performance.now() - t0;
  }

  /** One session.run that decodes one token for each of `seqs` (all past their prompt). */
  async runBatch(seqs, out) {
    const sts = seqs.map((q) => this.slots.get(q.slot));
    sts.forEach((st, b) => {
      if (st.length !== seqs[b].start) throw new Error(`slot ${seqs[b].slot} holds ${st.length} tokens but the step starts at ${seqs[b].start}`);
    });
    const B = seqs.length;
    if (!sts.every((st, b) => st.past === sts[0].past && st.row === b && st.rows === B)) this.gather(seqs.map((q) => q.slot));
    const past = sts[0].past;
    const W = past["past_key_values.0.key"].dims[2];
    const feeds = { ...past };
    feeds.input_ids = new this.ort.Tensor("int64", BigInt64Array.from(seqs, (q) => BigInt(q.tokens[0])), [B, 1]);
    const mask = new BigInt64Array(B * (W + 1));
    seqs.forEach((q, b) => mask.fill(1n, b * (W + 1), b * (W + 1) + q.start + 1));
    feeds.attention_mask = new this.ort.Tensor("int64", mask, [B, W + 1]);
    feeds.logits_index = new this.ort.Tensor("int64", new BigInt64Array(B), [B, 1]);
    const t0 = performance.now();
    const res = await this.session.run(feeds);
    const t1 = performance.now();
    const next = {};
    for (let i = 0; i < this.cfg.numLayers; i++)
      for (const kv of ["key", "value"]) next[`past_key_values.${i}.${kv}`] = res[`present.${i}.${kv}`];
    sts.forEach((st, b) => Object.assign(st, { past: next, length: seqs[b].start + 1, row: b, rows: B }));
    const V = res.logits.dims[2], all = res.logits.data;
    seqs.forEach((q, b) => {
      if (!q.sample) { out.tokens[q.seq_id] = []; return; }
      const logits = toFloat32({ type: res.logits.type, data: all.subarray(b * V, (b + 1) * V) });
      const [tok, lp] = sampleToken(logits, q.sampling, q.draw, q.history, q.logprobs);
      out.tokens[q.seq_id] = [tok];
      if (lp !== null) out.logprobs[q.seq_id] = [lp];
    });
    Object.assign(this.timings, { runs: this.timings.runs + 1, batchedRuns: this.timings.batchedRuns + 1,
                                  maxRows: Math.max(this.timings.maxRows, B), rowsRun: this.timings.rowsRun + B,
                                  runMs: this.timings.runMs + (t1 - t0),
                                  sampleMs: this.timings.sampleMs + (performance.now() - t1) });
    return [t0, t1];
  }

  release(slot) {
    const st = this.slots.get(slot);
    if (!st) return;
    for (const t of Object.values(st.past)) if (t.location === "gpu-buffer") t.dispose();
    this.slots.delete(slot);
  }

  /** One step: `plan` (JSON) lists per sequence its slot, tokens, start and sampling; returns
   * JSON {tokens: {seq_id: [id]}, logprobs: {...}}. Sequences run one after another, each on
   * its own slot's cache (one awaited call from Python covers them all). */
  step(planJson) {
    const run = this._step(planJson);
    this.running = run.catch(() => {});
    return run;
  }

  async _step(planJson) {
    const tEnter = performance.now();
    let tRun0 = tEnter, tRun1 = tEnter;
    const plan = JSON.parse(planJson);
    for (const s of plan.freed_slots) this.release(s);
    const out = { tokens: {}, logprobs: {} };
    const { numLayers } = this.cfg;
    this.timings.steps += 1;
    const decoding = this.batching ? plan.seqs.filter((q) => q.tokens.length === 1 && q.start > 0) : [];
    let seqs = plan.seqs;
    if (decoding.length > 1) {
      [tRun0, tRun1] = await this.runBatch(decoding, out);
      seqs = plan.seqs.filter((q) => !decoding.includes(q));
    }
    for (const q of seqs) {
      const st = this.pastFor(q.slot, q.start);
      const n = q.tokens.length;
      const feeds = { ...st.past };
      feeds.input_ids = new this.ort.Tensor("int64", BigInt64Array.from(q.tokens, BigInt), [1, n]);
      feeds.attention_mask = new this.ort.Tensor("int64", new BigInt64Array(q.start + n).fill(1n), [1, q.start + n]);
      feeds.logits_index = new this.ort.Tensor("int64", BigInt64Array.from([BigInt(n - 1)]), [1, 1]);
      const t0 = performance.now();
      const res = await this.session.run(feeds);
      const t1 = performance.now();
      if (tRun0 === tEnter) tRun0 = t0;
      tRun1 = t1;
      const past = {};
      for (let i = 0; i < numLayers; i++)
        for (const kv of ["key", "value"]) past[`past_key_values.${i}.${kv}`] = res[`present.${i}.${kv}`];
      for (const t of Object.values(st.past)) if (t.location === "gpu-buffer") t.dispose();
      st.past = past;
      st.length = q.start + n;
      if (q.sample) {
        const logits = toFloat32(res.logits);
        const [tok, lp] = sampleToken(logits, q.sampling, q.draw, q.history, q.logprobs);
        out.tokens[q.seq_id] = [tok];
        if (lp !== null) out.logprobs[q.seq_id] = [lp];
      } else {
        out.tokens[q.seq_id] = [];
      }
      this.timings.runs += 1;
      this.timings.rowsRun += 1;
      this.timings.maxRows = Math.max(this.timings.maxRows, 1);
      this.timings.runMs += t1 - t0;
      this.timings.sampleMs += performance.now() - t1;
    }
    const json = JSON.stringify(out);
    this.trace?.push([tEnter, tRun0, tRun1, performance.now()]);
    return json;
  }

  async dispose() {
    await this.running; // a step in flight finishes first
    for (const s of [...this.slots.keys()]) this.release(s);
    await this.session.release();
  }
}

function toFloat32(t) {
  if (t.type === "float32") return t.data;
  const h = t.data, f = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++) f[i] = halfToFloat(h[i]);
  return f;
}

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

// Token selection: the same rule, in the same order and precision, as
// realm_web/engines/sampler.py (see realm_web/sampling.py): repetition penalty, then greedy, or
// temperature -> candidates in canonical order (logit descending, id ascending) -> top-k ->
// top-p -> min-p -> inverse CDF at the draw u over unnormalized exp weights.
export function sampleToken(logits, p, u, history, wantLogprob) {
  const f = Math.fround;
  let x = logits;
  const rp = p.repetition_penalty ?? 1.0;
  if (rp !== 1.0 && history && history.length) {
    x = Float32Array.from(logits);
    const r = f(rp); // numpy divides float32 by float32: round the factor first (exact after)
    for (const id of new Set(history)) x[id] = x[id] > 0 ? f(x[id] / r) : f(x[id] * r);
  }
  const temp = p.temperature ?? 0.0;
  let tok;
  if (temp === 0) {
    tok = 0;
    for (let i = 1; i < x.length; i++) if (x[i] > x[tok]) tok = i;
  } else {
    const y = new Float32Array(x.length);
    const t = f(temp);
    for (let i = 0; i < x.length; i++) y[i] = f(x[i] / t);
    tok = pick(y, p.top_k ?? 0, p.top_p ?? 1.0, p.min_p ?? 0.0, u);
  }
  let lp = null;
  if (wantLogprob) {
    let m = -Infinity;
    for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
    let s = 0;
    for (let i = 0; i < x.length; i++) s += Math.exp(x[i] - m);
    lp = x[tok] - m - Math.log(s);
  }
  return [tok, lp];
}

function pick(y, topK, topP, minP, u) {
  const V = y.length;
  const k = topK <= 0 ? V : Math.min(topK, V);
  let cand = Array.from({ length: V }, (_, i) => i);
  const order = (a, b) => (y[b] - y[a]) || (a - b);
  if (k < V) {
    cand.sort(order);
    cand = cand.slice(0, k);
  } else {
    cand.sort(order);
  }
  const z0 = y[cand[0]];
  const w = new Float64Array(cand.length);
  for (let i = 0; i < cand.length; i++) w[i] = Math.exp(y[cand[i]] - z0);
  let n = cand.length;
  const c = new Float64Array(n);
  let acc = 0;
  for (let i = 0; i < n; i++) { acc += w[i]; c[i] = acc; }
  if (topP < 1.0) n = Math.min(n, searchLeft(c, n, topP * c[n - 1]) + 1);
  if (minP > 0.0) {
    let m = 0;
    for (let i = 0; i < n; i++) if (w[i] >= minP) m++;
    n = Math.min(n, Math.max(1, m));
  }
  const i = searchRight(c, n, u * c[n - 1]);
  return cand[Math.min(i, n - 1)];
}

function searchLeft(c, n, v) { let lo = 0, hi = n; while (lo < hi) { const m = (lo + hi) >> 1; if (c[m] < v) lo = m + 1; else hi = m; } return lo; }
function searchRight(c, n, v) { let lo = 0, hi = n; while (lo < hi) { const m = (lo + hi) >> 1; if (c[m] <= v) lo = m + 1; else hi = m; } return lo; }
