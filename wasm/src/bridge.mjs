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
// Lone rows (CPU backends): on some CPUs (x86 with AVX2 and no AVX-512) onnxruntime's quantized
// MatMulNBits multiplies a single row with another kernel than the same row among others, so a
// request decoding alone would get other tokens than in a batch. `create` checks (loneRowsDiffer:
// the model on one row and on two, from an empty cache) and, where they differ, a lone decode row
// runs in a batch with a phantom row (an empty cache fed one token, never sampled), as
// realm_web/engines/ort_native.py pads its lone rows. Prompt chunks run alone either way.
//
// LoRA (cfg.lora, realm_web/manifest.py's LoraContract, form "grouped-tc"): adapters sit in
// entries 1..maxLoras of a table per (layer, group) that `upload` fills; a step with rows on an
// adapter runs on the export's LoRA-capable twin graph (loaded the first time), fed the tables of
// the entries in use and each entry's rows (`order`, in chunks of at most 16, and `inverse`);
// rows with no adapter add exactly 0.0, so they equal the plain graph's.
//
// The plan message (realm_web/engines/ort_web.py): {seqs: [[seqId, slot, start, tokens,
// numSamples, draws, score?, masks?], ...], new?: [{id, slot, sampling, adapter, entry}], released?:
// [seqId], copies?: [[src, dst, length]]} (a new entry's `cached` > 0: its slot keeps that many positions): `score` lists tokens to score at the row's first
// positions (prompt logprobs), `masks` one uploaded token-mask key (setMask) or null per sample.
// The answer: {tokens: {seqId: [id, ...]}, logprobs: {seqId: [lp, ...]}, top: {seqId: [[[id, lp],
// ...] per sample]}, scores: {seqId: [lp, ...]}, scoreTops: {seqId: [[[id, lp], ...] per score]}}.

const EMPTY = { float32: () => new Float32Array(0), float16: () => new Uint16Array(0) };

export class Bridge {
  /** @param ort the onnxruntime-web module; @param model ONNX bytes (a path on onnxruntime-node);
   * @param cfg from realm.json (realm_web.web.config), plus threads, batching, maxLoras;
   * @param sources {lora: async () => the LoRA twin's bytes or path} to serve adapters, and
   * {externalData: async () => cfg.externalData again} for a packed export's weights */
  static async create(ort, model, cfg, sources = {}) {
    const backend = cfg.backend || "wasm";
    const providers = { webgpu: ["webgpu", "wasm"], cpu: ["cpu"] };
    const opts = { executionProviders: providers[backend] || ["wasm"], graphOptimizationLevel: "all" };
    if (backend === "cpu" && cfg.threads) Object.assign(opts, { intraOpNumThreads: cfg.threads, interOpNumThreads: 1 });
    // a packed export's weights (packed.mjs), outside the graph: the LoRA twin's session takes them too
    if (cfg.externalData) opts.externalData = cfg.externalData;
    const names = graphNames(cfg);
    if (backend === "webgpu") {
      opts.preferredOutputLocation = {};
      for (const [, present] of names.kv) opts.preferredOutputLocation[present] = "gpu-buffer";
    }
    const session = await ort.InferenceSession.create(model, opts);
    // the session holds its own copy of external weights: where they can be had again
    // (sources.externalData), let go of them until the LoRA twin's session needs them
    const { externalData: _held, ...rest } = cfg;
    if (sources.externalData) delete opts.externalData;
    const bridge = new Bridge(ort, session, { ...rest, backend }, sources, opts);
    if (bridge.batching && backend !== "webgpu") bridge.padLone = cfg.padLoneRows ?? await bridge.loneRowsDiffer();
    return bridge;
  }

  /** Whether the session computes one row alone (one token, empty cache) other than the same
   * row in a batch of two: the logits compared bit for bit (see "Lone rows" above). */
  async loneRowsDiffer() {
    const n = this.names;
    const logits = async (B) => {
      const feeds = this.emptyPast(B);
      feeds[n.input_ids] = new this.ort.Tensor("int64", new BigInt64Array(B).fill(1n), [B, 1]);
      feeds[n.attention_mask] = new this.ort.Tensor("int64", new BigInt64Array(B).fill(1n), [B, 1]);
      feeds[n.logits_index] = new this.ort.Tensor("int64", new BigInt64Array(B), [B, 1]);
      const t = (await this.session.run(feeds))[n.logits];
      const data = await tensorData(t);
      return new Uint8Array(data.buffer, data.byteOffset, (data.length / B) * data.BYTES_PER_ELEMENT);
    };
    const one = await logits(1), two = await logits(2);
    return one.some((x, i) => x !== two[i]);
  }

  constructor(ort, session, cfg, sources = {}, sessionOptions = {}) {
    this.ort = ort;
    this.session = session;
    this.cfg = cfg;
    this.sources = sources;
    this.sessionOptions = sessionOptions;
    this.lora = cfg.lora && sources.lora ? new LoraTables(cfg, cfg.maxLoras ?? 8) : null;
    this.loraSession = null; // the twin's session, made by the first step with an adapter row
    this.names = graphNames(cfg);
    this.masks = new Map(); // token-mask key -> Uint8Array (setMask)
    this.slots = new Map(); // slot -> {past: {name: Tensor}, row, rows}: row `row` of a batch of `rows`
    this.owner = new Map(); // slot -> the seq id announced on it
    this.tokens = new Map(); // slot -> the tokens in its cache (for the repetition penalty)
    this.seqs = new Map(); // seq id -> {spec, slot} (sent once, when it is announced)
    this.batching = cfg.batching ?? cfg.backend !== "webgpu";
    this.padLone = false; // lone decode rows run with a phantom row (set by create; see "Lone rows")
    this.phantom = null; // the phantom row's cache state
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
      adapters: this.lora !== null,
      token_masks: true,
      kv_copy: true,
      prefix_reuse: true,
    });
  }

  /** Measured step costs for the speculative policy (realm_web Scheduler.calibrate), as JSON:
   * {run_seconds, token_seconds}, a run's fixed seconds and the seconds per fed token, from the
   * medians of `reps` runs feeding 1 and 8 tokens on `ctx` positions of (zero) cache with logits
   * at every fed position, as a verify row asks. On this machine's WASM (2 threads) a run of w
   * tokens costs about 6 + 10.7 w ms: compute-bound, unlike native CPU or a GPU, so a verify row
   * costs nearly as much as the decode steps it replaces and the policy needs to know. Touches no
   * slot; call it while no step runs. */
  async calibrate(reps = 3, ctx = 64) {
    const { kvHeads: H, headDim: D, kvDtype } = this.cfg, n = this.names;
    const timed = async (width) => {
      const ts = [];
      for (let r = 0; r <= reps; r++) {
        const feeds = {};
        for (const [name] of n.kv) feeds[name] = new this.ort.Tensor(kvDtype, new (kvDtype === "float16" ? Uint16Array : Float32Array)(H * ctx * D), [1, H, ctx, D]);
        feeds[n.input_ids] = new this.ort.Tensor("int64", new BigInt64Array(width), [1, width]);
        feeds[n.attention_mask] = new this.ort.Tensor("int64", new BigInt64Array(ctx + width).fill(1n), [1, ctx + width]);
        feeds[n.logits_index] = new this.ort.Tensor("int64", BigInt64Array.from({ length: width }, (_, j) => BigInt(j)), [1, width]);
        const t0 = performance.now();
        const res = await this.session.run(feeds);
        await tensorData(res[n.logits]);
        ts.push(performance.now() - t0);
        disposeGpu(res);
      }
      ts.shift(); // the first run of a shape warms up
      ts.sort((a, b) => a - b);
      return ts[ts.length >> 1] / 1000;
    };
    const one = await timed(1), eight = await timed(8);
    const perToken = Math.max(1e-6, (eight - one) / 7);
    return JSON.stringify({ run_seconds: Math.max(1e-6, one - perToken), token_seconds: perToken });
  }

  /** Empty cache tensors (no positions) for a batch of `rows`. */
  emptyPast(rows = 1) {
    const { kvHeads, headDim, kvDtype } = this.cfg;
    const past = {};
    for (const [name] of this.names.kv) past[name] = new this.ort.Tensor(kvDtype, EMPTY[kvDtype](), [rows, kvHeads, 0, headDim]);
    return past;
  }

  /** A fresh single-row cache for `slot` (whatever it held is dropped). */
  empty(slot) {
    this.release(slot);
    const st = { past: this.emptyPast(), row: 0, rows: 1 };
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
    // Leaving a batch, or rolling back on WebGPU: its own cache of `start` positions. On the CPU
    // backends a rollback keeps the longer tensor: GroupQueryAttention reads each row's past length
    // from the attention mask (start + new tokens), so the stale positions past `start` are never
    // read and the new tokens overwrite them (no copy per rejected draft).
    if (st.rows > 1 || (held > start && this.cfg.backend === "webgpu")) {
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
    const real = rows;
    if (this.padLone && rows.length % LONE === 1) { // never a lone row: a phantom one, from an empty cache
      this.phantom ??= { past: this.emptyPast(), row: 0, rows: 1 };
      rows = [...rows, { seqId: null, slot: -1, start: 0, tokens: [1] }];
      sts.push(this.phantom);
    }
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
    const session = await this.sessionFor(rows.map((q) => (q.seqId === null ? 0 : this.entryOf(q))), 1, feeds);
    const t0 = performance.now();
    const res = await session.run(feeds);
    const t1 = performance.now();
    const next = {};
    for (const [name, present] of n.kv) next[name] = res[present];
    sts.forEach((st, b) => Object.assign(st, { past: next, row: b, rows: B }));
    real.forEach((q, b) => this.sample(q, res[n.logits], b, out));
    Object.assign(this.timings, { runs: this.timings.runs + 1, batchedRuns: this.timings.batchedRuns + 1,
                                  maxRows: Math.max(this.timings.maxRows, B), rowsRun: this.timings.rowsRun + real.length,
                                  runMs: this.timings.runMs + (t1 - t0),
                                  sampleMs: this.timings.sampleMs + (performance.now() - t1) });
    return [t0, t1];
  }

  /** One session.run for one row (a prompt chunk, or any row when not batching). */
  async runRow(q, out) {
    const st = await this.pastFor(q.slot, q.start);
    const n = q.tokens.length, m = q.numSamples, s = q.score.length, k = Math.max(1, m + s), names = this.names;
    const feeds = { ...st.past };
    feeds[names.input_ids] = new this.ort.Tensor("int64", BigInt64Array.from(q.tokens, BigInt), [1, n]);
    feeds[names.attention_mask] = new this.ort.Tensor("int64", new BigInt64Array(q.start + n).fill(1n), [1, q.start + n]);
    // the sampled positions first, then the scored ones (the last position when neither)
    const index = BigInt64Array.from({ length: k }, (_, j) => BigInt(j < m ? n - m + j : j - m < s ? j - m : n - 1));
    feeds[names.logits_index] = new this.ort.Tensor("int64", index, [1, k]);
    const session = await this.sessionFor([this.entryOf(q)], n, feeds);
    const t0 = performance.now();
    const res = await session.run(feeds);
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

  /** The adapter table entry of a row's request (0: none). */
  entryOf(q) {
    return this.seqs.get(q.seqId).entry;
  }

  /** The session for rows on table `entries` (0: none), each feeding `width` positions: the
   * plain graph when none has an adapter, else the LoRA twin, with its inputs added to `feeds`. */
  async sessionFor(entries, width, feeds) {
    if (!entries.some((e) => e > 0)) return this.session;
    if (!this.loraSession) {
      const t0 = performance.now();
      const opts = this.sources.externalData ? { ...this.sessionOptions, externalData: await this.sources.externalData() }
        : this.sessionOptions;
      this.loraSession = await this.ort.InferenceSession.create(await this.sources.lora(), opts);
      this.timings.loraLoadMs = performance.now() - t0;
    }
    const { lo, hi, order, inverse, dims } = loraGroups(entries, width);
    const c = this.cfg.lora.names;
    feeds[c.order] = new this.ort.Tensor("int64", order, dims);
    feeds[c.inverse] = new this.ort.Tensor("int64", inverse, [inverse.length]);
    Object.assign(feeds, this.lora.feeds(this.ort, lo, hi));
    return this.loraSession;
  }

  /** Put an adapter into table entry `entry` (1-based): `meta` JSON and `blob` bytes from
   * realm_web.engines.ort_web.adapter_blob (a Uint8Array, or Pyodide's proxy of Python bytes). */
  upload(entry, meta, blob) {
    if (!this.lora) throw new Error("this engine serves no LoRA adapters (the export has no LoRA graph)");
    let bytes = blob;
    if (!(blob instanceof Uint8Array)) { // a PyProxy of bytes: copy it out (it is freed after the call)
      const view = blob.getBuffer("u8");
      try { bytes = new Uint8Array(view.data); } finally { view.release(); }
    }
    this.lora.upload(entry, JSON.parse(meta), bytes);
  }

  /** The row's tokens at its sampled positions, from row b of logits (batch, k, vocab) whose
   * first positions are the sampled ones, then the scored ones; the logprobs its spec asks for. */
  sample(q, logits, b, out) {
    const { spec } = this.seqs.get(q.seqId);
    const [, K, V] = logits.dims;
    const row = (j) => toFloat32({ type: logits.type, data: logits.data.subarray((b * K + j) * V, (b * K + j + 1) * V) });
    const m = q.numSamples;
    if (q.score.length) {
      const xs = q.score.map((_, j) => row(m + j));
      out.scores[q.seqId] = xs.map((x, j) => tokenLogprob(x, q.score[j]));
      if (spec.top_logprobs) out.scoreTops[q.seqId] = xs.map((x) => topLogprobs(x, spec.top_logprobs));
    }
    if (!m) { out.tokens[q.seqId] = []; return; }
    const rows = Array.from({ length: m }, (_, j) => row(j));
    const masks = q.masks ? q.masks.map((key) => (key === null ? null : this.mask(key))) : null;
    const [toks, lps] = samplePositions(rows, spec, q.draws, this.tokens.get(q.slot), q.start + q.tokens.length - m, masks);
    out.tokens[q.seqId] = toks;
    if (lps) out.logprobs[q.seqId] = lps;
    if (spec.top_logprobs) out.top[q.seqId] = rows.map((x) => topLogprobs(x, spec.top_logprobs));
  }

  /** A token mask the core uploaded (setMask) under `key`. */
  mask(key) {
    const m = this.masks.get(key);
    if (!m) throw new Error(`token mask ${key} was not uploaded`);
    return m;
  }

  /** Keep token mask `key`: `blob` holds one byte per token id (1: allowed), a Uint8Array or
   * Pyodide's proxy of Python bytes (realm_web/engines/ort_web.py uploads each key once). */
  setMask(key, blob) {
    let bytes = blob;
    if (!(blob instanceof Uint8Array)) {
      const view = blob.getBuffer("u8");
      try { bytes = new Uint8Array(view.data); } finally { view.release(); }
    }
    this.masks.set(key, bytes);
  }

  /** Forget every uploaded token mask. */
  clearMasks() {
    this.masks.clear();
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
    const held = this.held(src);
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
    // prefix-cache hits (new.cached > 0): the slot's first positions are the new request's prefix
    const kept = new Set((plan.new || []).filter((n) => n.cached).map((n) => n.slot));
    for (const n of plan.new || []) {
      const held = this.held(n.slot);
      if (n.cached && !(n.cached <= held)) throw new Error(`sequence ${n.id}: slot ${n.slot} holds ${held} positions, not ${n.cached} to reuse`);
    }
    for (const id of plan.released || []) { // their slots' tensors are freed (GPU memory at once)
      const seq = this.seqs.get(id);
      this.seqs.delete(id);
      if (seq && this.owner.get(seq.slot) === id) {
        this.owner.delete(seq.slot);
        if (!kept.has(seq.slot)) { this.release(seq.slot); this.tokens.delete(seq.slot); }
      }
    }
    for (const n of plan.new || []) {
      const entry = n.entry ?? 0;
      if (n.adapter != null && !this.lora) throw new Error(`sequence ${n.id}: this engine serves no LoRA adapters (asked for ${n.adapter})`);
      if (!Number.isInteger(entry) || (entry === 0) !== (n.adapter == null) || (entry && !this.lora.holds(entry, n.adapter)))
        throw new Error(`sequence ${n.id}: adapter ${n.adapter} is not in table entry ${entry}`);
      if (!Number.isInteger(n.slot) || n.slot < 0) throw new Error(`sequence ${n.id}: no slot given`);
      this.seqs.set(n.id, { spec: n.sampling, slot: n.slot, entry });
      this.owner.set(n.slot, n.id);
    }
    for (const [src, dst, length] of plan.copies || []) await this.copy(src, dst, length);
    const rows = plan.seqs.map(([seqId, slot, start, tokens, numSamples, draws, score, masks]) =>
      ({ seqId, slot, start, tokens, numSamples, draws, score: score || [], masks: masks || null }));
    this.take(rows);
    const out = { tokens: {}, logprobs: {}, top: {}, scores: {}, scoreTops: {} };
    this.timings.steps += 1;
    if (rows.length) [tRun0, tRun1] = await this.runAll(rows, out);
    const json = JSON.stringify(out);
    this.trace?.push([tEnter, tRun0, tRun1, performance.now()]);
    return json;
  }

  /** Run a step's rows, writing what they sample into `out`; returns [first run's start, last
   * run's end] (ms). Decode rows run as one batch where batching, the rest one run each. */
  async runAll(rows, out) {
    let tRun0 = null, tRun1 = null;
    const decoding = this.batching ? rows.filter((q) => q.tokens.length === 1 && q.start > 0) : [];
    let rest = rows;
    if (decoding.length > 1 || (decoding.length === 1 && this.padLone)) {
      [tRun0, tRun1] = await this.runBatch(decoding, out);
      rest = rows.filter((q) => !decoding.includes(q));
    }
    for (const q of rest) {
      const [t0, t1] = await this.runRow(q, out);
      tRun0 ??= t0;
      tRun1 = t1;
    }
    return [tRun0, tRun1];
  }

  /** Positions `slot`'s cache holds (0: none). */
  held(slot) {
    return this.slots.get(slot)?.past[this.names.kv[0][0]].dims[2] ?? 0;
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
      if (q.score.length > q.tokens.length || (q.masks && q.masks.length !== q.numSamples))
        throw new Error(`sequence ${q.seqId}: ${q.score.length} scored positions and ${q.masks?.length} masks for ${q.tokens.length} tokens`);
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
    await this.loraSession?.release();
  }
}

const LONE = 128; // MLAS splits a matmul's rows in blocks of 128: a block of one row is a lone row
const CHUNK = 16; // columns per LoRA matmul (realm_web/engines/ort_lora.py: the same on every engine)

/** For rows on table entries `entries` (0: none) each feeding `width` positions: the range of
 * entries in use, `order` (entries, chunks, w) of each entry's flattened (row, position) indices
 * (padded with rows x width: the zero row) and `inverse` (rows x width) picking each one's
 * result (entries x chunks x w: the zero result, for no adapter). ort_lora.LoraTables.groups. */
export function loraGroups(entries, width) {
  const used = entries.filter((e) => e > 0);
  const lo = Math.min(...used), hi = Math.max(...used), E = hi - lo + 1;
  const total = entries.length * width;
  const where = Array.from({ length: E }, () => []);
  entries.forEach((e, r) => { if (e > 0) for (let p = 0; p < width; p++) where[e - lo].push(r * width + p); });
  const most = Math.max(...where.map((w) => w.length));
  const w = Math.min(Math.max(2, most), CHUNK), chunks = Math.ceil(most / w), n = chunks * w;
  const order = new BigInt64Array(E * n).fill(BigInt(total));
  const inverse = new BigInt64Array(total).fill(BigInt(E * n));
  where.forEach((pos, k) => pos.forEach((x, j) => { order[k * n + j] = BigInt(x); inverse[x] = BigInt(k * n + j); }));
  return { lo, hi, order, inverse, dims: [E, chunks, w] };
}

/** The adapter tables of the LoRA twin: per layer i and group g, A^T (entries, 1, members x R,
 * in) and each member's B^T (entries, 1, out_k, R), R = the graph's max rank; entry e at index
 * e - 1. Float32, or float16 bits when the graph's activations are fp16. */
export class LoraTables {
  constructor(cfg, entries) {
    this.cfg = cfg;
    this.entries = entries;
    this.R = cfg.lora.maxRank;
    this.half = cfg.kvDtype === "float16";
    this.groups = new Map(cfg.lora.groups.map((g) => [g.name, g]));
    this.names = new Map(); // entry -> the adapter's name
    this.tables = null; // "i.g" -> [{dims, data}] (allocated by the first upload)
    this.cache = null; // [lo, hi, feeds]
  }

  holds(entry, name) {
    return this.names.get(entry) === name;
  }

  alloc() {
    const { R, entries: E } = this, Arr = this.half ? Uint16Array : Float32Array;
    this.tables = new Map();
    for (let i = 0; i < this.cfg.numLayers; i++)
      for (const g of this.groups.values()) {
        const ts = [{ dims: [1, g.outs.length * R, g.in], data: new Arr(E * g.outs.length * R * g.in) }];
        for (const out of g.outs) ts.push({ dims: [1, out, R], data: new Arr(E * out * R) });
        this.tables.set(`${i}.${g.name}`, ts);
      }
  }

  upload(entry, meta, bytes) {
    if (!Number.isInteger(entry) || entry < 1 || entry > this.entries) throw new Error(`adapter entry ${entry} is not in [1, ${this.entries}]`);
    if (bytes.byteLength % 4) throw new Error(`adapter ${meta.name}: ${bytes.byteLength} bytes is not float32 data`);
    if (!this.tables) this.alloc();
    const f = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4); // copied: aligned
    const E = this.entries, R = this.R, cv = this.half ? floatToHalf : (x) => x;
    for (const ts of this.tables.values()) for (const t of ts) { const per = t.data.length / E; t.data.fill(0, (entry - 1) * per, entry * per); }
    let off = 0;
    for (const [i, name, total, splits] of meta.groups) {
      const g = this.groups.get(name), ts = this.tables.get(`${i}.${name}`);
      if (!g || !ts || splits.length !== g.outs.length) throw new Error(`adapter ${meta.name}: layer ${i} has no group ${name} here`);
      const nIn = g.in, nOut = g.outs.reduce((a, b) => a + b, 0);
      const a = f.subarray(off, off + nIn * total), b = f.subarray(off + nIn * total, off + nIn * total + total * nOut);
      off += nIn * total + total * nOut;
      if (b.length !== total * nOut) throw new Error(`adapter ${meta.name}: its data ends inside layer ${i} ${name}`);
      const A = ts[0].data, aBase = (entry - 1) * g.outs.length * R * nIn;
      let o = 0, col = 0; // the member's first rank column in A_g / row in B_g, its first output
      splits.forEach((r, k) => {
        const outK = g.outs[k];
        if (r > R) throw new Error(`adapter ${meta.name}: layer ${i} ${name} member ${k} has rank ${r}, the graph holds ${R}`);
        for (let j = 0; j < r; j++) { // A^T row k*R + j: column o + j of A_g
          const row = aBase + (k * R + j) * nIn;
          for (let c = 0; c < nIn; c++) A[row + c] = cv(a[c * total + o + j]);
        }
        const B = ts[1 + k].data, bBase = (entry - 1) * outK * R;
        for (let j = 0; j < r; j++) { // B^T column j: row o + j of B_g, the member's outputs
          const src = (o + j) * nOut + col;
          for (let p = 0; p < outK; p++) B[bBase + p * R + j] = cv(b[src + p]);
        }
        o += r;
        col += outK;
      });
    }
    if (off !== f.length) throw new Error(`adapter ${meta.name}: ${f.length - off} values left over`);
    this.names.set(entry, meta.name);
  }

  /** The table inputs for entries lo..hi (1-based, inclusive), by graph input name. */
  feeds(ort, lo, hi) {
    if (this.cache && this.cache[0] === lo && this.cache[1] === hi) return this.cache[2];
    const { a, b } = this.cfg.lora.names, E = this.entries, type = this.half ? "float16" : "float32";
    const out = {};
    for (const [key, ts] of this.tables) {
      const [i, g] = key.split(".");
      ts.forEach((t, k) => {
        const name = (k === 0 ? a : b).replaceAll("{i}", i).replaceAll("{g}", g).replaceAll("{k}", String(k - 1));
        const per = t.data.length / E;
        out[name] = new ort.Tensor(type, t.data.subarray((lo - 1) * per, hi * per), [hi - lo + 1, ...t.dims]);
      });
    }
    this.cache = [lo, hi, out];
    return out;
  }
}

const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);

/** float32 -> float16 bits, rounding to nearest even (as numpy's astype). */
export function floatToHalf(x) {
  f32[0] = x;
  const bits = u32[0], sign = (bits >>> 16) & 0x8000, e = (bits >>> 23) & 0xff, m = bits & 0x7fffff;
  if (e === 0xff) return sign | 0x7c00 | (m ? 0x200 : 0);
  const he = e - 127 + 15;
  if (he >= 0x1f) return sign | 0x7c00;
  if (he <= 0) {
    if (he < -10) return sign;
    const mm = m | 0x800000, shift = 14 - he;
    let h = mm >>> shift;
    const rem = mm & ((1 << shift) - 1), half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (he << 10) | (m >>> 13);
  const rem = m & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return sign | h;
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
 * row, the first at position `first`): position j uses draws[j] (none when greedy), masks[j] (a
 * Uint8Array over the vocabulary, 1 = allowed; null: none) and, for the repetition penalty, the
 * row's tokens up to its own position (`rowTokens.slice(0, first + j + 1)`). Returns [tokens,
 * logprobs (of the raw logits) or null]; realm_web/engines/sampler.py's sample_positions. */
export function samplePositions(rows, spec, draws, rowTokens, first, masks = null) {
  const toks = [], lps = [];
  rows.forEach((x, j) => {
    const hist = rowTokens && spec.repetition_penalty !== 1.0 ? rowTokens.slice(0, first + j + 1) : null;
    const [tok, lp] = sampleToken(x, spec, draws.length ? draws[j] : 0, hist, masks ? masks[j] : null);
    toks.push(tok);
    if (lp !== null) lps.push(lp);
  });
  return [toks, spec.logprobs ? lps : null];
}

/** The log-softmax normalizer of raw logits x: max + log(sum(exp(x - max))), in float32 steps
 * like numpy's (sampler.py's log_softmax). */
function logNorm(x) {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.exp(x[i] - m);
  return m + Math.log(s);
}

/** The log-probability of token `tok` under raw logits x. */
export function tokenLogprob(x, tok) {
  return x[tok] - logNorm(x);
}

/** The n most likely tokens of raw logits x as [id, logprob] pairs, logprob descending, id
 * ascending (sampler.py's top_logprobs). */
export function topLogprobs(x, n) {
  if (n <= 0) return [];
  const best = []; // sorted: larger logit first, then lower id
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    if (best.length === n && !(v > x[best[n - 1]])) continue;
    let j = best.length === n ? n - 1 : best.length;
    while (j > 0 && v > x[best[j - 1]]) { if (j < n) best[j] = best[j - 1]; j--; }
    best[j] = i;
    if (best.length > n) best.length = n;
  }
  const z = logNorm(x);
  return best.map((i) => [i, x[i] - z]);
}

// Token selection: the rule of realm_web.step.SamplingSpec, in the same order and precision as
// realm_web/engines/sampler.py: mask, repetition penalty, then greedy, or temperature -> candidates
// in canonical order (logit descending, id ascending) -> top-k -> top-p -> min-p -> inverse CDF at
// the draw u over unnormalized exp weights. tests/golden/sampling.json holds the vectors both
// must reproduce (wasm/test/sampling.test.mjs, tests/test_sampling.py). `p` is the spec (all
// fields present); returns [token, logprob of the raw logits or null].
export function sampleToken(logits, p, u, history, mask = null) {
  const f = Math.fround;
  let x = logits;
  if (mask) {
    x = Float32Array.from(logits);
    for (let i = 0; i < x.length; i++) if (!mask[i]) x[i] = -Infinity;
  }
  const rp = p.repetition_penalty;
  if (rp !== 1.0 && history && history.length) {
    if (x === logits) x = Float32Array.from(logits);
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
  return [tok, p.logprobs ? tokenLogprob(logits, tok) : null];
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
