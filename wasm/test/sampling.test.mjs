// The JavaScript token-selection kernel (wasm/src/bridge.mjs) reproduces every golden vector of
// tests/golden/sampling.json, the same file the numpy kernel is held to (tests/test_sampling.py):
// seeded sampling gives the same tokens in the browser, in Node and natively.
import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { samplePositions, toFloat32, topLogprobs } from "realm-web/bridge";

const here = path.dirname(fileURLToPath(import.meta.url));
const golden = JSON.parse(fs.readFileSync(path.join(here, "..", "..", "tests", "golden", "sampling.json"), "utf8"));

test("the golden file is there and not empty", () => {
  assert.ok(golden.cases.length > 100);
});

for (const c of golden.cases) {
  test(`golden ${c.name}`, () => {
    const rows = c.logits.map((r) => c.dtype === "float16"
      ? toFloat32({ type: "float16", data: Uint16Array.from(r) })
      : Float32Array.from(r));
    const V = rows[0].length;
    const masks = c.masks && c.masks.map((m) => {
      if (m === null) return null;
      const u = new Uint8Array(V);
      for (const id of m) u[id] = 1;
      return u;
    });
    const [toks, lps] = samplePositions(rows, c.spec, c.draws, c.tokens, c.first, masks);
    assert.deepEqual(toks, c.expect.tokens);
    if (c.expect.top !== null) {
      rows.forEach((x, j) => {
        const got = topLogprobs(x, c.spec.top_logprobs);
        assert.deepEqual(got.map(([i]) => i), c.expect.top[j].map(([i]) => i));
        got.forEach(([, v], i) => assert.ok(Math.abs(v - c.expect.top[j][i][1]) < 1e-4));
      });
    }
    if (c.expect.logprobs === null) assert.equal(lps, null);
    else c.expect.logprobs.forEach((lp, i) => assert.ok(Math.abs(lps[i] - lp) < 1e-4, `logprob ${i}: ${lps[i]} vs ${lp}`));
  });
}
