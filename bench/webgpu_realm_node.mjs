// The whole Node product on a real GPU: Realm.load({engine: "webgpu"}) (the Python core in
// Pyodide, the realm kernels through gpu_bridge.mjs) on Node + dawn.node, the default model's
// export. Greedy answers to three questions, compared with the native fp32 engine's (chat_ref.json,
// made here with realm_web.LLM), each alone and then all at once with 8 concurrent requests
// (continuous batching on the GPU); per-request time to first token and decode tok/s from the
// core's timings, and the aggregate tokens/s. Run by bench/webgpu_kernels.sh when it finds
// wasm/node_modules/pyodide and wasm/dist carried:
//   node webgpu_realm_node.mjs REALM_MJS MODEL_DIR CHAT_REF OUT_JSON
import fs from "node:fs";
import path from "node:path";

const [realmMjs, modelDir, refPath, outPath] = process.argv.slice(2);
// dawn.node made first (as bench/webgpu_node.mjs does) and handed to Realm as `gpu`; no global
// navigator shim (Pyodide takes a global `navigator` for a browser's)
const { create, globals } = await import("webgpu");
Object.assign(globalThis, globals);
const gpu = create([]);
const { Realm } = await import(realmMjs);
const ref = JSON.parse(fs.readFileSync(refPath, "utf8"));
const t0 = performance.now();
const progress = (m) => process.env.VERBOSE && console.error(`[${((performance.now()) / 1000).toFixed(2)} s] ${m}`);
progress("loading");
const realm = await Realm.load({ model: modelDir, engine: "webgpu", maxSlots: 8, gpu });
progress(`loaded: ${realm.info.runtime}`);
const result = { info: { ...realm.info }, load_s: (performance.now() - t0) / 1000, alone: [], together: null };
const qs = Object.keys(ref);
let first = null;
for (let rep = 0; rep < 2; rep++) {
  for (const q of qs) {
    const r = await realm.generate(q, { maxTokens: 48 });
    progress(`answered ${JSON.stringify(r.text.slice(0, 40))}`);
    first ??= performance.now();
    result.alone.push({ rep, q, same: JSON.stringify(r.tokenIds) === JSON.stringify(ref[q].tokenIds), timings: r.timings, text: r.text.slice(0, 60) });
  }
}
result.first_answer_s_after_process_start = first / 1000;
const batch = Array.from({ length: 8 }, (_, i) => qs[i % qs.length]);
const s = performance.now();
const rs = await Promise.all(batch.map((q) => realm.generate(q, { maxTokens: 48 })));
const wall = (performance.now() - s) / 1000;
const tokens = rs.reduce((a, r) => a + r.tokenIds.length, 0);
result.together = { requests: 8, wall_s: wall, tokens, tok_s: tokens / wall,
                    same: rs.map((r, i) => JSON.stringify(r.tokenIds) === JSON.stringify(ref[batch[i]].tokenIds)) };
result.stats = realm.stats?.() ?? null;
await realm.close?.();
console.log(JSON.stringify({ alone: result.alone.map((a) => [a.same, a.timings.decode_tokens_per_s, a.timings.ttft_s]), together: result.together }));
fs.writeFileSync(outPath, JSON.stringify(result, null, 1));
process.exit(0);
