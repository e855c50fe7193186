// Speculative decoding in the npm package (make test-node): the same Python core in Pyodide over
// onnxruntime-web (WASM) and onnxruntime-node; output with speculation must equal output without.
import test, { before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Realm } from "realm-web";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, "..", "..");
const PYTHON = process.env.REALM_WEB_PYTHON || path.join(ROOT, ".venv", "bin", "python");
const TEXT = "The committee met on Tuesday to review the budget. It approved the new library, postponed the road repairs and asked the treasurer for a revised forecast by March.";
const PROMPTS = [`Repeat this text exactly: ${TEXT}`, `Extract the decisions from this text as a list: ${TEXT}`];
const KINDS = [{ maxTokens: 40 }, { maxTokens: 40, temperature: 0.8, topP: 0.9, topK: 30, seed: 5 },
               { maxTokens: 40, repetitionPenalty: 1.3 }];

function modelDir() {
  if (process.env.REALM_WEB_TEST_MODEL) return process.env.REALM_WEB_TEST_MODEL;
  const out = execFileSync(PYTHON, ["-m", "realm_web.cli", "pull"], { cwd: ROOT, encoding: "utf8" });
  return out.trim().split("\n").pop();
}

for (const engine of ["wasm", "native"]) {
  describe(`speculative ngram on ${engine}`, () => {
    let plain, spec;
    before(async () => {
      const model = modelDir();
      plain = await Realm.load({ model, engine, dtype: "fp32", maxSlots: 4 });
      spec = await Realm.load({ model, engine, dtype: "fp32", maxSlots: 4,
                                speculative: { method: "ngram", numSpeculativeTokens: 4, adaptive: false } });
    });
    after(async () => { await plain?.close(); await spec?.close(); });

    test("greedy, seeded and penalized output equals plain output, alone and together", async () => {
      for (const opts of KINDS) {
        for (const p of PROMPTS) {
          const [a, b] = [await plain.generate(p, opts), await spec.generate(p, opts)];
          assert.deepEqual(b.tokenIds, a.tokenIds, `${JSON.stringify(opts)} ${p.slice(0, 20)}`);
        }
      }
      const together = await Promise.all(PROMPTS.flatMap((p) => KINDS.map((o) => spec.generate(p, o))));
      const alone = [];
      for (const p of PROMPTS) for (const o of KINDS) alone.push(await plain.generate(p, o));
      assert.deepEqual(together.map((c) => c.tokenIds), alone.map((c) => c.tokenIds));
      const st = spec.stats().speculative;
      assert.ok(st.verify_steps > 0 && st.accepted_tokens > 0, JSON.stringify(st));
      assert.equal(st.emitted_tokens, st.verify_steps + st.accepted_tokens);
      assert.equal(plain.stats().speculative, null);
      // the policy was priced by this engine's measured step costs at load
      assert.ok(spec.info.stepCosts.run_seconds > 0 && spec.info.stepCosts.token_seconds > 0, JSON.stringify(spec.info.stepCosts));
      assert.equal(plain.info.stepCosts, null);
    });
  });
}

test("a bad speculative option is a typed error", async () => {
  for (const speculative of ["eagle", { method: "ngram", numSpeculativeTokens: 0 }, { method: "ngram", k: 3 }]) {
    await assert.rejects(Realm.load({ model: modelDir(), engine: "wasm", dtype: "fp32", speculative }),
                         (e) => e.code === "bad_option", JSON.stringify(speculative));
  }
});
