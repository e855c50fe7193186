// The step contract on the JavaScript engine (wasm/src/bridge.mjs over onnxruntime-node, fp32),
// with hand-made plans as realm_web/engines/ort_web.py sends them: samples at several positions
// equal step-by-step decoding, a plan's `start` rolls a row back (alone or inside a batched
// decode), KV copies give a slot another's prefix, and plans outside the contract are refused.
//   REALM_WEB_TEST_MODEL, REALM_WEB_PYTHON: as in realm.test.mjs
import test, { before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Bridge } from "realm-web/bridge";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, "..", "..");
const PYTHON = process.env.REALM_WEB_PYTHON || path.join(ROOT, ".venv", "bin", "python");

// The bridge's config for the fp32 export (realm_web.web.config) and a prompt's ids, from Python.
const SETUP_PY = `
import json, sys
from realm_web import load_tokenizer
from realm_web.paths import default_model_dir
from realm_web.web import config
d = sys.argv[1] or str(default_model_dir())
print(json.dumps({"dir": d, "cfg": json.loads(config(d, "cpu", "fp32")),
                  "prompt": load_tokenizer(d).encode("The quick brown fox jumps over the lazy dog. The quick brown")}))
`;
const GREEDY = { temperature: 0, top_k: 0, top_p: 1, min_p: 0, repetition_penalty: 1, logprobs: false };
const PENALTY = { ...GREEDY, repetition_penalty: 1.5 };

let bridge, P, n, g;
const step = async (plan) => JSON.parse(await bridge.step(JSON.stringify({ seqs: [], ...plan }))).tokens;

before(async () => {
  const out = execFileSync(PYTHON, ["-c", SETUP_PY, process.env.REALM_WEB_TEST_MODEL || ""], { cwd: ROOT, encoding: "utf8" });
  const { dir, cfg, prompt } = JSON.parse(out.trim().split("\n").pop());
  const ort = await import("onnxruntime-node");
  bridge = await Bridge.create(ort.InferenceSession ? ort : ort.default, path.join(dir, cfg.file), { ...cfg, threads: 2 });
  P = prompt;
  n = P.length;
  // ten greedy tokens, one decode step at a time
  g = (await step({ seqs: [[0, 0, 0, P, 1, []]], new: [{ id: 0, slot: 0, sampling: GREEDY }] }))[0];
  for (let i = 0; i < 9; i++) g.push(...(await step({ seqs: [[0, 0, n + i, [g[i]], 1, []]] }))[0]);
  await step({ released: [0] });
});

after(async () => { await bridge?.dispose(); });

test("samples at several positions equal step-by-step decoding, and the plan rolls a row back", async () => {
  assert.deepEqual((await step({ seqs: [[1, 0, 0, P, 1, []]], new: [{ id: 1, slot: 0, sampling: GREEDY }] }))[1], g.slice(0, 1));
  assert.deepEqual((await step({ seqs: [[1, 0, n, g.slice(0, 7), 7, []]] }))[1], g.slice(1, 8));
  assert.deepEqual((await step({ seqs: [[1, 0, n + 3, [g[3]], 1, []]] }))[1], g.slice(4, 5)); // back to n + 3
  assert.deepEqual((await step({ seqs: [[1, 0, n + 4, g.slice(4, 6), 2, []]] }))[1], g.slice(5, 7));
  await step({ released: [1] });
});

test("a batched decode rolls one of its rows back inside the shared cache", async () => {
  const news = [{ id: 2, slot: 0, sampling: GREEDY }, { id: 3, slot: 1, sampling: GREEDY }];
  await step({ seqs: [[2, 0, 0, P, 1, []], [3, 1, 0, P, 1, []]], new: news });
  const runs0 = bridge.timings.batchedRuns;
  let out = await step({ seqs: [[2, 0, n, [g[0]], 1, []], [3, 1, n, [g[0]], 1, []]] });
  assert.deepEqual([out[2], out[3]], [g.slice(1, 2), g.slice(1, 2)]);
  out = await step({ seqs: [[2, 0, n + 1, [g[1]], 1, []], [3, 1, n + 1, [g[1]], 1, []]] });
  // row 3 goes back one position and feeds the same token again: the same answer
  out = await step({ seqs: [[2, 0, n + 2, [g[2]], 1, []], [3, 1, n + 1, [g[1]], 1, []]] });
  assert.deepEqual([out[2], out[3]], [g.slice(3, 4), g.slice(2, 3)]);
  assert.equal(bridge.timings.batchedRuns - runs0, 3);
  await step({ released: [2, 3] });
});

test("a KV copy gives a slot another slot's prefix (and its tokens, for the penalty)", async () => {
  await step({ seqs: [[4, 0, 0, [...P, ...g.slice(0, 4)], 1, []]], new: [{ id: 4, slot: 0, sampling: GREEDY }] });
  const a = await step({ seqs: [[5, 2, n - 1, P.slice(-1), 1, []]], new: [{ id: 5, slot: 2, sampling: PENALTY }], copies: [[0, 2, n - 1]] });
  const b = await step({ seqs: [[6, 3, 0, P, 1, []]], new: [{ id: 6, slot: 3, sampling: PENALTY }] });
  assert.deepEqual(a[5], b[6]);
  const c = await step({ seqs: [[5, 2, n, a[5], 1, []], [6, 3, n, b[6], 1, []]] });
  assert.deepEqual(c[5], c[6]);
  await step({ released: [4, 5, 6] });
});

test("plans outside the contract are refused with a clear error", async () => {
  await assert.rejects(step({ seqs: [[7, 0, 0, P, 1, []]] }), /announced/);
  await step({ seqs: [[7, 0, 0, P, 1, []]], new: [{ id: 7, slot: 0, sampling: GREEDY }] });
  await assert.rejects(step({ seqs: [[7, 0, n + 5, [1], 1, []]] }), /holds/);
  await assert.rejects(step({ copies: [[0, 1, n + 50]] }), /cannot copy/);
  await assert.rejects(step({ new: [{ id: 8, slot: 0, sampling: GREEDY, adapter: "sql" }] }), /adapter/);
  assert.deepEqual(JSON.parse(bridge.capabilities()).prefill_width, null);
});
