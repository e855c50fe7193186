// The bridge over realm-web's own WebGPU kernels (kernels.mjs): the same step contract, plan
// parsing, sampling and token masks as bridge.mjs's Bridge (whose `runAll`, `held`, `copy`,
// `release`, `calibrate` and `dispose` it replaces), with no onnxruntime session. A step's rows run
// as few forwards as the decoder's limits allow (all tokens together, every row's logits rows);
// when every row of a forward picks greedily with nothing else to report (no mask, penalty or
// logprobs), the GPU picks the tokens and only their ids come back. LoRA adapters (cfg.lora: the
// export's LoRA contract) go into the kernels' own tables (kernels.mjs "LoRA"), an entry each,
// laid out by bridge.mjs's LoraTables.

import { Bridge, LoraTables } from "./bridge.mjs";
import { GpuDecoder } from "./kernels.mjs";

export class GpuBridge extends Bridge {
  /** @param device a GPUDevice; @param packed the packed export's .blocks bytes; @param cfg as
   * Bridge.create's (realm_web.web.config, with `arch`: realm.json's architecture); @param
   * options GpuDecoder.create's (maxTokens, maxLogits, lanes); `cfg.maxLoras` adapters one step
   * may mix (default 8; their tables are allocated on the GPU with the first adapter) */
  static async create(device, packed, cfg, options = {}) {
    const dec = await GpuDecoder.create(device, cfg.arch, packed, options);
    return new GpuBridge(dec, cfg);
  }

  constructor(dec, cfg) {
    super(null, null, { ...cfg, backend: "webgpu", kernels: "realm", lora: null });
    this.dec = dec;
    this.lora = cfg.lora ? new GpuLora(dec, cfg, cfg.maxLoras ?? 8) : null;
    this.prefillWidth = dec.T;
    this.timings.forwards = 0;
    this.timings.greedyForwards = 0;
  }

  capabilities() {
    return JSON.stringify({
      padded_span: false,
      prefill_batch: "any",
      prefill_width: this.dec.T,
      multi_position_logits: true,
      adapters: this.lora !== null,
      token_masks: true,
      kv_copy: true,
      prefix_reuse: true,
    });
  }

  held(slot) {
    return this.dec.lengths.get(slot) ?? 0;
  }

  /** Each row's logits positions (indices into its tokens): the sampled ones (its last
   * numSamples), then the scored ones (its first), as Bridge.runRow feeds logits_index. */
  static positions(q) {
    const n = q.tokens.length, m = q.numSamples;
    return [...Array.from({ length: m }, (_, j) => n - m + j), ...q.score.map((_, j) => j)];
  }

  /** Whether row q's tokens are its logits' argmax and nothing else is asked of them. */
  greedyOnly(q) {
    const { spec } = this.seqs.get(q.seqId);
    return spec.temperature === 0 && !spec.logprobs && !spec.top_logprobs && spec.repetition_penalty === 1
      && !q.score.length && !(q.masks && q.masks.some((k) => k !== null));
  }

  async runAll(rows, out) {
    const { T, maxLogits } = this.dec, V = this.cfg.vocabSize;
    const groups = [];
    let cur = [], toks = 0, lgs = 0;
    for (const q of rows) {
      const k = GpuBridge.positions(q).length;
      if (cur.length && (toks + q.tokens.length > T || lgs + k > maxLogits)) { groups.push(cur); cur = []; toks = 0; lgs = 0; }
      cur.push(q); toks += q.tokens.length; lgs += k;
    }
    groups.push(cur);
    let tRun0 = null, tRun1 = null;
    for (const g of groups) {
      const greedy = g.every((q) => this.greedyOnly(q));
      const fw = g.map((q) => ({ slot: q.slot, start: q.start, tokens: q.tokens, logits: GpuBridge.positions(q), entry: this.entryOf(q) }));
      const t0 = performance.now();
      const res = await this.dec.forward(fw, greedy);
      const t1 = performance.now();
      let at = 0;
      g.forEach((q, b) => {
        const k = fw[b].logits.length;
        if (greedy) out.tokens[q.seqId] = Array.from(res.subarray(at, at + q.numSamples));
        else if (k) this.sample(q, { type: "float32", dims: [1, k, V], data: res.subarray(at * V, (at + k) * V) }, 0, out);
        else out.tokens[q.seqId] = [];
        at += k;
      });
      const tm = this.timings;
      Object.assign(tm, { runs: tm.runs + 1, forwards: tm.forwards + 1, greedyForwards: tm.greedyForwards + (greedy ? 1 : 0),
                          maxRows: Math.max(tm.maxRows, g.length), rowsRun: tm.rowsRun + g.length, runMs: tm.runMs + (t1 - t0),
                          sampleMs: tm.sampleMs + (performance.now() - t1) });
      tRun0 ??= t0;
      tRun1 = t1;
    }
    return [tRun0, tRun1];
  }

  release(slot) {
    this.dec.release(slot);
  }

  async copy(src, dst, length) {
    if (src === dst || length < 0 || length > this.held(src)) throw new Error(`cannot copy ${length} positions of slot ${src} (it holds ${this.held(src)}) to slot ${dst}`);
    this.dec.copy(src, dst, length);
    this.tokens.set(dst, (this.tokens.get(src) || []).slice(0, length));
  }

  /** Bridge.calibrate's measurement on the kernels: runs of 1 and 8 tokens at `ctx` positions of
   * a spare slot (released after), logits at every fed position. */
  async calibrate(reps = 3, ctx = 64) {
    const slot = Math.max(this.dec.slots, ...[...this.dec.lengths.keys()].map((s) => s + 1));
    const timed = async (width) => {
      const ts = [];
      for (let r = 0; r <= reps; r++) {
        const t0 = performance.now();
        await this.dec.forward([{ slot, start: ctx, tokens: new Array(width).fill(0), logits: Array.from({ length: width }, (_, j) => j) }], false);
        ts.push(performance.now() - t0);
      }
      ts.shift();
      ts.sort((a, b) => a - b);
      return ts[ts.length >> 1] / 1000;
    };
    const one = await timed(1), eight = await timed(8);
    this.dec.release(slot);
    const perToken = Math.max(1e-6, (eight - one) / 7);
    return JSON.stringify({ run_seconds: Math.max(1e-6, one - perToken), token_seconds: perToken });
  }

  async dispose() {
    await this.running;
    this.dec.destroy();
  }
}

/** The adapters of the realm kernels' LoRA tables: `upload` lays one out as bridge.mjs's
 * LoraTables does (float32, rank padded to the contract's maxRank) and copies it to the GPU. */
class GpuLora {
  constructor(dec, cfg, entries) {
    this.dec = dec;
    this.cfg = { ...cfg, kvDtype: "float32" };
    this.entries = entries;
    this.names = new Map(); // entry -> the adapter's name
  }

  holds(entry, name) {
    return this.names.get(entry) === name;
  }

  upload(entry, meta, bytes) {
    if (!Number.isInteger(entry) || entry < 1 || entry > this.entries) throw new Error(`adapter entry ${entry} is not in [1, ${this.entries}]`);
    const one = new LoraTables(this.cfg, 1);
    one.upload(1, meta, bytes);
    this.dec.enableLora(this.cfg.lora, this.entries);
    this.dec.loadLora(entry, one.tables);
    this.names.set(entry, meta.name);
  }
}
