// The realm kernels' host side (wasm/src/kernels.mjs), where no GPU is needed: the GGUF blocks
// regrouped for the shaders dequantize, in the shaders' word and nibble order, to exactly the fp32
// weights packed.mjs expands (so to the fp32 export's); kernelPlan refuses what the kernels cannot
// run with a reason. The kernels themselves run in Chromium's WebGPU (tests/test_browser.py), in
// Node on dawn.node over SwiftShader (tests/test_node_webgpu.py) and on the lent GPU
// (bench/webgpu_kernels.sh).
//   REALM_WEB_TEST_MODEL, REALM_WEB_PYTHON: as in realm.test.mjs
import test from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { kernelPlan, parsePacked, regroup } from "realm-web/kernels";
import { expandTensor } from "../src/packed.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, "..", "..");
const PYTHON = process.env.REALM_WEB_PYTHON || path.join(ROOT, ".venv", "bin", "python");
const MODEL = process.env.REALM_WEB_TEST_MODEL
  || execFileSync(PYTHON, ["-m", "realm_web.cli", "pull"], { cwd: ROOT, encoding: "utf8" }).trim().split("\n").pop();
const manifest = JSON.parse(fs.readFileSync(path.join(MODEL, "realm.json"), "utf8"));
const packed = manifest.variants.fp32.packed;
const { meta, data } = parsePacked(new Uint8Array(fs.readFileSync(path.join(MODEL, packed.blocks))));

/** What the WGSL does with regrouped blocks (matvecShader's body4): word i of a Q4_1 block holds
 * elements 4i..4i+3 in its low nibbles and 16+4i.. in its high ones, w = q * d + m; Q8_0 word i
 * elements 4i..4i+3 as signed bytes, w = q * d. Float32 arithmetic, row-major (n, k). */
function dequantLikeTheShader(t, q, s) {
  const nb = (t.rows * t.cols) / 32, out = new Float32Array(t.rows * t.cols), f = Math.fround;
  for (let b = 0; b < nb; b++) {
    if (t.kind === "q4_1") {
      const d = s[2 * b], m = s[2 * b + 1];
      for (let i = 0; i < 4; i++) {
        const w = q[4 * b + i];
        for (let j = 0; j < 4; j++) {
          out[32 * b + 4 * i + j] = f(f(((w >>> (8 * j)) & 15) * d) + m);
          out[32 * b + 16 + 4 * i + j] = f(f(((w >>> (8 * j + 4)) & 15) * d) + m);
        }
      }
    } else {
      const d = s[b];
      for (let i = 0; i < 8; i++) for (let j = 0; j < 4; j++) out[32 * b + 4 * i + j] = f((((q[8 * b + i] >>> (8 * j)) << 24) >> 24) * d);
    }
  }
  return out;
}

test("regrouped blocks dequantize to the fp32 export's weights, bit for bit", () => {
  const plan = kernelPlan(manifest.architecture, meta);
  assert.equal(plan.why, undefined);
  const l = plan.layers[7];
  for (const t of [l.qkv, l.o, l.gateUp, l.down, plan.embed]) {
    const bytes = data.subarray(t.data, t.data + t.data_bytes);
    const [q, s] = regroup(t, bytes);
    const mine = dequantLikeTheShader(t, q, s);
    // packed.mjs's expansion: the exact fp32 weights, laid out as the graph holds them
    const weights = new Uint8Array(t.bytes);
    expandTensor({ ...t, offset: 0 }, bytes, weights);
    const want = new Float32Array(weights.buffer);
    for (let n = 0; n < t.rows; n += 37) for (let k = 0; k < t.cols; k++) {
      const at = t.transpose ? k * t.rows + n : n * t.cols + k;
      if (Object.is(mine[n * t.cols + k], want[at])) continue;
      assert.fail(`${t.name} (${t.kind}) at (${n}, ${k}): ${mine[n * t.cols + k]} != ${want[at]}`);
    }
  }
});

test("kernelPlan says why it cannot run a model", () => {
  const a = manifest.architecture;
  assert.match(kernelPlan({ ...a, architecture: "mistral" }, meta).why, /architecture mistral/);
  assert.match(kernelPlan({ ...a, attention_bias: true }, meta).why, /attention biases/);
  assert.match(kernelPlan({ ...a, rope_scaling: { type: "linear" } }, meta).why, /RoPE scaling/);
  assert.match(kernelPlan({ ...a, head_dim: 48 }, meta).why, /shape/);
  const lacking = { ...meta, tensors: meta.tensors.filter((t) => t.name !== "/layers.3/mlp/down_proj.weight") };
  assert.match(kernelPlan(a, lacking).why, /no \/layers\.3\/mlp\/down_proj\.weight/);
  const raw = { ...meta, tensors: meta.tensors.map((t) => (t.name === "/layers.0/attn/o_proj.weight" ? { ...t, kind: "raw" } : t)) };
  assert.match(kernelPlan(a, raw).why, /o_proj\.weight is raw \(the kernels read q4_1, q8_0\)/);
  assert.throws(() => parsePacked(new Uint8Array(16)), /bad magic/);
});
