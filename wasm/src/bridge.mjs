// The onnxruntime-web side of realm-web's `ort_web` engine.
//
// The Python core (scheduler, tokenizer, sampling parameters, stop rules) runs in Pyodide and
// calls `step(planJson)` once per step. This module owns what must stay out of Python: the ORT
// session, each KV slot's tensors (on the GPU with WebGPU: outputs stay in GPU buffers and the
// replaced ones are disposed) and the token-selection kernel over the logits, which never cross
// into Python. It implements no scheduling, tokenization or stop rule, and keeps no count of a
// row's length: each step's plan says where a row's tokens start (a row whose cache is longer is
// cut back to that: a rollback). Graph input and output names come from realm.json.
//
// The same code drives onnxruntime-web (backend "wasm" or "webgpu") and onnxruntime-node (backend
// "cpu": the same InferenceSession/Tensor API over native onnxruntime).
//
// Batched decode (CPU backends): when a step decodes one token for several sequences, they run
// as ONE session.run over a batch of rows. Their caches live in shared tensors of shape (rows,
// kv_heads, width, head_dim), right-padded: the attention mask gives each row its own length,
// so GroupQueryAttention reads and appends each row at that row's own position (as the native
// engine's padded batches do). The batch's `present` outputs are the next step's `past`; rows are
// regathered (copied) only when the set of decoding sequences changes. Other rows (prompt chunks,
// several positions, WebGPU) run one session.run each, all within the one awaited step.
//
// The plan message (realm_web/engines/ort_web.py): {seqs: [[seqId, slot, start, tokens,
// numSamples, draws], ...], new?: [{id, slot, sampling, adapter}], released?: [seqId], copies?:
// [[src, dst, length]]}, each new entry {id, slot, sampling, adapter}. The answer: {tokens: {seqId: [id, ...]}, logprobs: {seqId: [lp, ...]}}.

const EMPTY = { float32: () => new Float32Array(0), float16: () => new Uint16Array(0) };

export class Bridge {
  /** @param ort the onnxruntime-web module; @param model ONNX bytes; @param cfg from realm.json */
  static async create(ort, model, cfg) {
    const backend = cfg.backend || "wasm";
    const providers = { webgpu: ["webgpu", "wasm"], cpu: ["cpu"] };
    const opts = { executionProviders: providers[backend] || ["wasm"], graphOptimizationLevel: "all" };
    if (backend === "cpu" && cfg.threads) Object.assign(opts, { intraOpNumThreads: cfg.threads, interOpNumThreads: 1 });
    const names = graphNames(cfg);
    if (backend === "webgpu") {
      opts.preferredOutputLocation = {};
      for (const [, present] of names.kv) opts.preferredOutputLocation[present] = "gpu-buffer";
    }
    const session = await ort.InferenceSession.create(model, opts);
    return new Bridge(ort, session, { ...cfg, backend });
  }

  constructor(ort, session, cfg) {
    this.ort = ort;
    this.session = session;
    this.cfg = cfg;
    this.names = graphNames(cfg);
    this.slots = new Map(); // slot -> {past: {name: Tensor}, row, rows}: row `row` of a batch of `rows`
    this.owner = new Map(); // slot -> the seq id announced on it
    this.tokens = new Map(); // slot -> the tokens in its cache (for the repetition penalty)
    this.seqs = new Map(); // seq id -> {spec, slot} (sent once, when it is announced)
    this.batching = cfg.batching ?? cfg.backend !== "webgpu";
    // onnxruntime-web 1.30's WebGPU GroupQueryAttention returns wrong values for a step of 32 or
    // more new tokens (checked against WASM on a 2-layer model: equal up to 31, off from 32).
    this.prefillWidth = cfg.backend === "webgpu" ? 16 : null;
    this.timings = { steps: 0, runs: 0, batchedRuns: 0, maxRows: 0, rowsRun: 0, runMs: 0, sampleMs: 0, gatherMs: 0 };
    this.trace = null; // an array to record [enter, runStart, runEnd, exit] (ms since timeOrigin) per step
  }

  /** What this engine runs in one step (realm_web.step.EngineCaps), as JSON. */
  capabilities() {
    return JSON.stringify({
      padded_span: false, // rows run one session.run each (decode rows: one batched run)
      prefill_batch: "any",
      prefill_width: this.prefillWidth,
      multi_position_logits: true,
      adapters: false,
      token_masks: false,
      kv_copy: true,
    });
  }

  /** A fresh single-row cache for `slot` (whatever it held is dropped). */
  empty(slot) {
    const { kvHeads, headDim, kvDtype } = this.cfg;
    this.release(slot);
    const past = {};
    for (const [name] of this.names.kv) past[name] = new this.ort.Tensor(kvDtype, EMPTY[kvDtype](), [1, kvHeads, 0, headDim]);
    const st = { past, row: 0, rows: 1 };
    this.slots.set(slot, st);
    return st;
  }

  /** The state of `slot`, holding exactly `start` positions in a single-row cache. */
  async pastFor(slot, start) {
    if (start === 0) return this.empty(slot);
    const st = this.slots.get(slot);
    if (!st) throw new Error(`slot ${slot} holds no cache but the step starts at ${start}`);
    const held = st.past[this.names.kv[0][0]].dims[2];
    if (start > held) throw new Error(`slot ${slot} holds ${held} positions but the step starts at ${start}`);
    if (st.rows > 1 || held > start) { // leaves a batch, or rolls back: its own cache of `start` positions
      const old = st.past;
      Object.assign(st, { past: await this.build([st], [start]), row: 0, rows: 1 });
      disposeGpu(old);
    }
    return st;
  }

  /** New cache tensors holding row `st.row` of each state's cache, its first `lengths[b]`
   * positions, as row b of a batch right-padded to the longest. */
  async build(sts, lengths) {
    const t0 = performance.now();
    const { kvHeads: H, headDim: D, kvDtype } = this.cfg;
    const B = sts.length, W = Math.max(...lengths);
    const past = {};
    for (const [name] of this.names.kv) {
      const datas = [];
      for (const st of sts) datas.push(await tensorData(st.past[name]));
      const dst = new datas[0].constructor(B * H * W * D);
      sts.forEach((st, b) => {
        const src = st.past[name], sw = src.dims[2], data = datas[b];
        if (lengths[b] > sw) throw new Error(`a cache of ${sw} positions cannot give ${lengths[b]}`);
        for (let h = 0; h < H; h++) {
          const from = ((st.row * H + h) * sw) * D;
          dst.set(data.subarray(from, from + lengths[b] * D), ((b * H + h) * W) * D);
        }
      });
      past[name] = new this.ort.Tensor(kvDtype, dst, [B, H, W, D]);
    }
    this.timings.gatherMs += performance.now() - t0;
    return past;
  }

  /** One session.run that decodes one token for each of `rows` (all past their prompt). */
  async runBatch(rows, out) {
    const sts = rows.map((q) => {
      const st = this.slots.get(q.slot);
      if (!st) throw new Error(`slot ${q.slot} holds no cache but the step starts at ${q.start}`);
      return st;
    });
    const B = rows.length;
    if (!sts.every((st, b) => st.past === sts[0].past && st.row === b && st.rows === B)) {
      const past = await this.build(sts, rows.map((q) => q.start));
      sts.forEach((st, b) => Object.assign(st, { past, row: b, rows: B }));
    }
    const past = sts[0].past;
    const W = past[this.names.kv[0][0]].dims[2];
    rows.forEach((q) => { if (q.start > W) throw new Error(`slot ${q.slot} holds ${W} positions but the step starts at ${q.start}`); });
    const n = this.names;
    const feeds = { ...past };
    feeds[n.input_ids] = new this.ort.Tensor("int64", BigInt64Array.from(rows, (q) => BigInt(q.tokens[0])), [B, 1]);
    const mask = new BigInt64Array(B * (W + 1));
    rows.forEach((q, b) => mask.fill(1n, b * (W + 1), b * (W + 1) + q.start + 1));
    feeds[n.attention_mask] = new this.ort.Tensor("int64", mask, [B, W + 1]);
    feeds[n.logits_index] = new this.ort.Tensor("int64", new BigInt64Array(B), [B, 1]);
    const t0 = performance.now();
    const res = await this.session.run(feeds);
    const t1 = performance.now();
    const next = {};
    for (const [name, present] of n.kv) next[name] = res[present];
    sts.forEach((st, b) => Object.assign(st, { past: next, row: b, rows: B }));
    rows.forEach((q, b) => this.sample(q, res[n.logits], b, out));
    Object.assign(this.timings, { runs: this.timings.runs + 1, batchedRuns: this.timings.batchedRuns + 1,
                                  maxRows: Math.max(this.timings.maxRows, B), rowsRun: this.timings.rowsRun + B,
                                  runMs: this.timings.runMs + (t1 - t0),
                                  sampleMs: this.timings.sampleMs + (performance.now() - t1) });
    return [t0, t1];
  }

  /** One session.run for one row (a prompt chunk, or any row when not batching). */
  async runRow(q, out) {
    const st = await this.pastFor(q.slot, q.start);
    const n = q.tokens.length, k = Math.max(1, q.numSamples), names = this.names;
    const feeds = { ...st.past };
    feeds[names.input_ids] = new this.ort.Tensor("int64", BigInt64Array.from(q.tokens, BigInt), [1, n]);
    feeds[names.attention_mask] = new this.ort.Tensor("int64", new BigInt64Array(q.start + n).fill(1n), [1, q.start + n]);
    feeds[names.logits_index] = new this.ort.Tensor("int64", BigInt64Array.from({ length: k }, (_, j) => BigInt(n - k + j)), [1, k]);
    const t0 = performance.now();
    const res = await this.session.run(feeds);
    const t1 = performance.now();
    const old = st.past;
    st.past = {};
    for (const [name, present] of names.kv) st.past[name] = res[present];
    disposeGpu(old);
    this.sample(q, res[names.logits], 0, out);
    this.timings.runs += 1;
    this.timings.rowsRun += 1;
    this.timings.maxRows = Math.max(this.timings.maxRows, 1);
    this.timings.runMs += t1 - t0;
    this.timings.sampleMs += performance.now() - t1;
    return [t0, t1];
  }

  /** The row's tokens at its sampled positions, from row b of logits (batch, k, vocab). */
  sample(q, logits, b, out) {
    if (!q.numSamples) { out.tokens[q.seqId] = []; return; }
    const { spec } = this.seqs.get(q.seqId);
    const [, K, V] = logits.dims;
    const rows = Array.from({ length: q.numSamples }, (_, j) =>
      toFloat32({ type: logits.type, data: logits.data.subarray((b * K + j) * V, (b * K + j + 1) * V) }));
    const [toks, lps] = samplePositions(rows, spec, q.draws, this.tokens.get(q.slot), q.start + q.tokens.length - q.numSamples);
    out.tokens[q.seqId] = toks;
    if (lps) out.logprobs[q.seqId] = lps;
  }

  release(slot) {
    const st = this.slots.get(slot);
    if (!st) return;
    if (st.rows === 1) disposeGpu(st.past);
    this.slots.delete(slot);
  }

  /** Positions [0, length) of `src`'s cache (and tokens) become `dst`'s. */
  async copy(src, dst, length) {
    const s = this.slots.get(src);
    const held = s ? s.past[this.names.kv[0][0]].dims[2] : 0;
    if (src === dst || length > held || length < 0) throw new Error(`cannot copy ${length} positions of slot ${src} (it holds ${held}) to slot ${dst}`);
    const past = await this.build([s], [length]);
    this.release(dst);
    this.slots.set(dst, { past, row: 0, rows: 1 });
    this.tokens.set(dst, (this.tokens.get(src) || []).slice(0, length));
  }

  /** One step: see the plan message above. Rows run one after another (decode rows batched),
   * all within this one awaited call from Python. */
  step(planJson) {
    const run = this._step(planJson);
    this.running = run.catch(() => {});
    return run;
  }

  async _step(planJson) {
    const tEnter = performance.now();
    let tRun0 = tEnter, tRun1 = tEnter;
    const plan = JSON.parse(planJson);
    for (const id of plan.released || []) { // their slots' tensors are freed (GPU memory at once)
      const seq = this.seqs.get(id);
      this.seqs.delete(id);
      if (seq && this.owner.get(seq.slot) === id) { this.release(seq.slot); this.owner.delete(seq.slot); this.tokens.delete(seq.slot); }
    }
    for (const n of plan.new || []) {
      if (n.adapter != null) throw new Error(`sequence ${n.id}: this engine serves no LoRA adapters (asked for ${n.adapter})`);
      if (!Number.isInteger(n.slot) || n.slot < 0) throw new Error(`sequence ${n.id}: no slot given`);
      this.seqs.set(n.id, { spec: n.sampling, slot: n.slot });
      this.owner.set(n.slot, n.id);
    }
    for (const [src, dst, length] of plan.copies || []) await this.copy(src, dst, length);
    const rows = plan.seqs.map(([seqId, slot, start, tokens, numSamples, draws]) => ({ seqId, slot, start, tokens, numSamples, draws }));
    this.take(rows);
    const out = { tokens: {}, logprobs: {} };
    this.timings.steps += 1;
    const decoding = this.batching ? rows.filter((q) => q.tokens.length === 1 && q.start > 0) : [];
    let rest = rows;
    if (decoding.length > 1) {
      [tRun0, tRun1] = await this.runBatch(decoding, out);
      rest = rows.filter((q) => !decoding.includes(q));
    }
    for (const q of rest) {
      const [t0, t1] = await this.runRow(q, out);
      if (tRun0 === tEnter) tRun0 = t0;
      tRun1 = t1;
    }
    const json = JSON.stringify(out);
    this.trace?.push([tEnter, tRun0, tRun1, performance.now()]);
    return json;
  }

  /** Check each row against what its slot holds and this engine's capabilities; cut each
   * slot's tokens to where the row starts and append what it feeds. */
  take(rows) {
    const width = this.prefillWidth ?? Infinity;
    for (const q of rows) {
      const seq = this.seqs.get(q.seqId);
      if (!seq) throw new Error(`sequence ${q.seqId} runs without having been announced`);
      if (seq.slot !== q.slot) throw new Error(`sequence ${q.seqId} was announced on slot ${seq.slot}, not ${q.slot}`);
      if (q.tokens.length === 0 || q.tokens.length > width) throw new Error(`sequence ${q.seqId}: ${q.tokens.length} tokens in one step (at most ${width} on ${this.cfg.backend})`);
      if (q.numSamples > q.tokens.length || (q.draws.length && q.draws.length !== q.numSamples))
        throw new Error(`sequence ${q.seqId}: ${q.numSamples} samples and ${q.draws.length} draws for ${q.tokens.length} tokens`);
      let t = this.tokens.get(q.slot);
      if (!t || q.start === 0) { t = []; this.tokens.set(q.slot, t); }
      if (q.start > t.length) throw new Error(`slot ${q.slot} holds ${t.length} tokens but the step starts at ${q.start}`);
      t.length = q.start;
      for (const id of q.tokens) t.push(id);
    }
  }

  async dispose() {
    await this.running; // a step in flight finishes first
    for (const s of [...this.slots.keys()]) this.release(s);
    await this.session.release();
  }
}

/** Graph names from realm.json (cfg.names, by role), per-layer names expanded. */
function graphNames(cfg) {
  const n = cfg.names || {};
  const need = ["input_ids", "attention_mask", "logits_index", "logits", "past_key", "past_value", "present_key", "present_value"];
  const missing = need.filter((r) => typeof n[r] !== "string");
  if (missing.length) throw new Error(`the model's graph names lack ${missing.join(", ")} (realm.json graph.names)`);
  const kv = [];
  for (let i = 0; i < cfg.numLayers; i++)
    for (const k of ["key", "value"]) kv.push([n[`past_${k}`].replaceAll("{i}", i), n[`present_${k}`].replaceAll("{i}", i)]);
  return { input_ids: n.input_ids, attention_mask: n.attention_mask, logits_index: n.logits_index, logits: n.logits, kv };
}

async function tensorData(t) {
  return t.location === "gpu-buffer" ? await t.getData() : t.data;
}

function disposeGpu(past) {
  for (const t of Object.values(past)) if (t.location === "gpu-buffer") t.dispose();
}

/** Logits of one position as a Float32Array (fp16 tensors hold uint16 bits). */
export function toFloat32(t) {
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

/** One token per entry of `rows` (the Float32Array logits of consecutive positions of one cache
 * row, the first at position `first`): position j uses draws[j] (none when greedy) and, for the
 * repetition penalty, the row's tokens up to its own position (`rowTokens.slice(0, first + j +
 * 1)`). Returns [tokens, logprobs or null]; realm_web/engines/sampler.py's sample_positions. */
export function samplePositions(rows, spec, draws, rowTokens, first) {
  const toks = [], lps = [];
  rows.forEach((x, j) => {
    const hist = rowTokens && spec.repetition_penalty !== 1.0 ? rowTokens.slice(0, first + j + 1) : null;
    const [tok, lp] = sampleToken(x, spec, draws.length ? draws[j] : 0, hist);
    toks.push(tok);
    if (lp !== null) lps.push(lp);
  });
  return [toks, spec.logprobs ? lps : null];
}

// Token selection: the rule of realm_web.step.SamplingSpec, in the same order and precision as
// realm_web/engines/sampler.py: repetition penalty, then greedy, or temperature -> candidates in
// canonical order (logit descending, id ascending) -> top-k -> top-p -> min-p -> inverse CDF at
// the draw u over unnormalized exp weights. tests/golden/sampling.json holds the vectors both
// must reproduce (wasm/test/sampling.test.mjs, tests/test_sampling.py). `p` is the spec (all
// fields present); returns [token, logprob or null].
export function sampleToken(logits, p, u, history) {
  const f = Math.fround;
  let x = logits;
  const rp = p.repetition_penalty;
  if (rp !== 1.0 && history && history.length) {
    x = Float32Array.from(logits);
    const r = f(rp); // numpy divides float32 by float32: round the factor first (exact after)
    for (const id of new Set(history)) x[id] = x[id] > 0 ? f(x[id] / r) : f(x[id] * r);
  }
  const temp = p.temperature;
  let tok;
  if (temp === 0) {
    tok = 0;
    for (let i = 1; i < x.length; i++) if (x[i] > x[tok]) tok = i;
  } else {
    const y = new Float32Array(x.length);
    const t = f(temp);
    for (let i = 0; i < x.length; i++) y[i] = f(x[i] / t);
    tok = pick(y, p.top_k, p.top_p, p.min_p, u);
  }
  let lp = null;
  if (p.logprobs) {
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
