// One row of bench/node.py: the realm-web npm package in this Node process (Pyodide + the core,
// onnxruntime-web WASM or onnxruntime-node), greedy, EOS ignored so every run makes all the tokens.
//   node bench/node_bench.mjs '{"model": DIR, "engine": "wasm", "threads": 1, "dtype": null,
//                              "prompts": [...], "newTokens": 128, "reps": 3, "concurrent": 4}'
// Prints one JSON line: single-stream TTFT and decode tok/s (median of reps after a warm-up; times
// taken here, in JS, around llm.stream), and with `concurrent` > 1 the aggregate tok/s of that many
// different prompts at once (and the engine's batching counters).
import os from "node:os";
import { Realm } from "../wasm/src/index.mjs";

const a = JSON.parse(process.argv[2]);
const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
const load = () => os.loadavg().map((x) => Math.round(x * 100) / 100);

const t0 = performance.now();
const llm = await Realm.load({ model: a.model, engine: a.engine, threads: a.threads, dtype: a.dtype ?? null });
const loadS = (performance.now() - t0) / 1e3;
const opts = { maxTokens: a.newTokens, ignoreEos: true };

async function single() {
  const t = performance.now();
  let first = null, n = 0, ids = [];
  for await (const d of llm.stream(a.prompts[0], opts)) {
    if (d.tokenIds.length && first === null) first = performance.now();
    n += d.tokenIds.length;
    ids.push(...d.tokenIds);
  }
  const end = performance.now();
  return { ttft_s: (first - t) / 1e3, decode_tok_s: (n - 1) / ((end - first) / 1e3), n, ids };
}

async function together(k) {
  const t = performance.now();
  const rs = await Promise.all(a.prompts.slice(0, k).map((p) => llm.generate(p, opts)));
  const s = (performance.now() - t) / 1e3;
  const n = rs.reduce((acc, r) => acc + r.tokenIds.length, 0);
  return { wall_s: s, tok_s: n / s, n };
}

const out = { engine: a.engine, threads: llm.info.threads, dtype: llm.info.dtype, runtime: llm.info.runtime,
              load_s: Math.round(loadS * 100) / 100, loadavg_before: load() };
await single(); // warm-up
const runs = [];
for (let i = 0; i < a.reps; i++) runs.push(await single());
Object.assign(out, {
  ttft_s: median(runs.map((r) => r.ttft_s)), decode_tok_s: median(runs.map((r) => r.decode_tok_s)),
  decode_tok_s_all: runs.map((r) => Math.round(r.decode_tok_s * 10) / 10), ttft_s_all: runs.map((r) => Math.round(r.ttft_s * 1e4) / 1e4),
  tokens: runs[0].ids,
});
if (a.concurrent > 1) {
  const s0 = llm.stats();
  const cs = [];
  for (let i = 0; i < a.reps; i++) cs.push(await together(a.concurrent));
  const s1 = llm.stats();
  out.concurrent = { n: a.concurrent, tok_s: median(cs.map((c) => c.tok_s)), tok_s_all: cs.map((c) => Math.round(c.tok_s * 10) / 10),
                     wall_s: median(cs.map((c) => c.wall_s)), max_rows: s1.maxRows,
                     runs: s1.runs - s0.runs, batched_runs: s1.batchedRuns - s0.batchedRuns };
}
out.loadavg_after = load();
await llm.close();
console.log(JSON.stringify(out));
