// The npm package realm-web under `node --test` (make test-node): real Pyodide with the core's
// wheel, real onnxruntime-web (WASM) and onnxruntime-node, the real default model; token ids
// compared with the native Python engine (realm_web on onnxruntime CPU) run in this test.
//   REALM_WEB_TEST_MODEL   model directory (default: what `realm-web pull` prints)
//   REALM_WEB_PYTHON       the Python with realm_web installed (default: ../.venv/bin/python)
import test, { before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as pkg from "realm-web"; // the package's own exports map
import { Realm, RealmError, RealmEngineError } from "realm-web";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, "..", "..");
const PYTHON = process.env.REALM_WEB_PYTHON || path.join(ROOT, ".venv", "bin", "python");
const PROMPTS = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?", "Write a haiku about the sea."];
const MAX = 24;
const SEEDED = { maxTokens: 16, temperature: 0.9, topP: 0.95, topK: 40, seed: 11 };

function modelDir() {
  if (process.env.REALM_WEB_TEST_MODEL) return process.env.REALM_WEB_TEST_MODEL;
  const out = execFileSync(PYTHON, ["-m", "realm_web.cli", "pull"], { cwd: ROOT, encoding: "utf8" });
  return out.trim().split("\n").pop();
}

// The native Python engine's answers: greedy ids of each prompt alone, and one seeded sample.
const REFERENCE_PY = `
import json, sys
from realm_web import LLM
model, dtypes, prompts, max_tokens, seeded = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
out = {}
for dtype in dtypes:
    llm = LLM(model, dtype=dtype, max_slots=2, max_length=512)
    greedy = []
    for p in prompts:
        c = llm.generate(p, max_tokens=max_tokens)[0]
        greedy.append({"tokenIds": c.token_ids, "promptTokenIds": c.prompt_token_ids, "text": c.text})
    s = llm.generate(prompts[3], max_tokens=seeded["maxTokens"], temperature=seeded["temperature"], top_p=seeded["topP"],
                     top_k=seeded["topK"], seed=seeded["seed"])[0]
    out[dtype] = {"greedy": greedy, "seeded": s.token_ids}
    llm.close()
print(json.dumps(out))
`;

function preferred(dir, engineName) {
  const m = JSON.parse(fs.readFileSync(path.join(dir, "realm.json"), "utf8"));
  const v = Object.values(m.variants);
  return (v.find((x) => (x.preferred_by || []).includes(engineName)) || v[0]).dtype;
}

let MODEL, WHEEL, REF;
const engines = {};

before(async () => {
  MODEL = modelDir();
  assert.ok(fs.existsSync(path.join(MODEL, "realm.json")), `${MODEL}: no model (run make model)`);
  // A fresh wheel of the core in the working tree (what make web puts in wasm/dist)
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "realm-web-test-"));
  WHEEL = execFileSync(PYTHON, [path.join(ROOT, "tools", "build_core_wheel.py"), "--out", tmp], { encoding: "utf8" }).trim();
  const dtypes = [...new Set([preferred(MODEL, "wasm"), preferred(MODEL, "cpu")])];
  const r = spawnSync(PYTHON, ["-c", REFERENCE_PY, MODEL, JSON.stringify(dtypes), JSON.stringify(PROMPTS), String(MAX), JSON.stringify(SEEDED)],
                      { cwd: ROOT, encoding: "utf8", maxBuffer: 1 << 26 });
  assert.equal(r.status, 0, r.stderr);
  REF = JSON.parse(r.stdout.trim().split("\n").pop());
});

after(async () => {
  for (const e of Object.values(engines)) await e.llm?.close();
});

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

for (const engine of ["native", "wasm"]) {
  describe(`engine ${engine}`, () => {
    let llm, alone;
    before(async () => {
      llm = await Realm.load({ model: MODEL, engine, wheel: WHEEL });
      engines[engine] = { llm };
      alone = [];
      for (const p of PROMPTS) alone.push(await llm.generate(p, { maxTokens: MAX }));
    });

    test("loads the export the manifest prefers for it", () => {
      assert.equal(llm.info.engine, engine);
      assert.equal(llm.info.dtype, preferred(MODEL, engine === "wasm" ? "wasm" : "cpu"));
      assert.match(llm.info.runtime, engine === "wasm" ? /^onnxruntime-web 1\.30\.0/ : /^onnxruntime-node 1\.30\.0/);
    });

    test("answers Paris", () => {
      const r = alone[0];
      assert.match(r.text, /Paris/);
      assert.equal(r.finishReason, "stop");
      assert.equal(r.usage.prompt_tokens, r.promptTokenIds.length);
      assert.equal(r.usage.completion_tokens, r.tokenIds.length);
      assert.ok(r.timings.ttft_s > 0 && r.timings.total_s >= r.timings.ttft_s);
    });

    test("greedy token ids equal the native Python engine's", () => {
      const ref = REF[llm.info.dtype].greedy;
      PROMPTS.forEach((p, i) => {
        assert.deepEqual(alone[i].promptTokenIds, ref[i].promptTokenIds, p);
        assert.deepEqual(alone[i].tokenIds, ref[i].tokenIds, p);
        assert.equal(alone[i].text, ref[i].text, p);
      });
    });

    test("seeded sampling equals the native Python engine's", async () => {
      const r = await llm.generate(PROMPTS[3], SEEDED);
      assert.deepEqual(r.tokenIds, REF[llm.info.dtype].seeded);
    });

    test("4 concurrent prompts: each equals its result alone, decoded in batched runs", async () => {
      const s0 = llm.stats();
      const together = await Promise.all(PROMPTS.map((p) => llm.generate(p, { maxTokens: MAX })));
      const s1 = llm.stats();
      together.forEach((r, i) => assert.deepEqual(r.tokenIds, alone[i].tokenIds, PROMPTS[i]));
      assert.equal(s1.maxRows, 4, "the four requests decoded in one session.run");
      const rows = s1.rowsRun - s0.rowsRun, runs = s1.runs - s0.runs;
      // every decode step while two or more requests still run is one batched run
      const second = alone.map((r) => r.tokenIds.length).sort((a, b) => b - a)[1];
      assert.ok(s1.batchedRuns - s0.batchedRuns >= second - 2, `${s1.batchedRuns - s0.batchedRuns} batched runs, 2nd longest ${second}`);
      assert.ok(runs < rows / 2, `${runs} runs for ${rows} rows`);
    });
  });
}

describe("lone rows padded (padLoneRows)", () => {
  // Where a CPU's quantized kernels compute one row otherwise than a batch (x86 without AVX-512),
  // a lone decode row runs with a phantom row (bridge.mjs "Lone rows"). Forced on here: the tokens
  // are still the native Python engine's (which pads on the same CPUs), and the lone request's
  // decode steps ran as batches of two.
  test("a lone request decodes in batches of two and gives the same ids", async () => {
    const llm = await Realm.load({ model: MODEL, engine: "native", wheel: WHEEL, padLoneRows: true });
    try {
      assert.equal(llm.info.padLoneRows, true);
      const r = await llm.generate(PROMPTS[0], { maxTokens: MAX });
      assert.deepEqual(r.tokenIds, REF[llm.info.dtype].greedy[0].tokenIds);
      const s = llm.stats();
      assert.equal(s.maxRows, 2);
      assert.ok(s.batchedRuns >= r.tokenIds.length - 1, `${s.batchedRuns} batched runs for ${r.tokenIds.length} tokens`);
      assert.equal(s.rowsRun, s.runs, "the phantom row is not counted");
    } finally { await llm.close(); }
  });
});

describe("a model from a URL (Node): the packed download, mirrored", () => {
  // An HTTP server of the model directory with Range support; the first blocks download breaks off
  // half way, so the loader must resume it.
  let server, url, home, seen;
  before(async () => {
    const http = await import("node:http");
    seen = [];
    let broken = false;
    server = http.createServer((req, res) => {
      const name = decodeURIComponent(req.url.slice(1));
      const f = path.join(MODEL, name);
      seen.push([name, req.headers.range || null]);
      if (name.includes("/") || !fs.existsSync(f)) { res.writeHead(404); res.end(); return; }
      const size = fs.statSync(f).size;
      const m = /^bytes=(\d+)-$/.exec(req.headers.range || "");
      const start = m ? Number(m[1]) : 0;
      res.writeHead(m ? 206 : 200, { "content-length": String(size - start), "accept-ranges": "bytes",
                                     ...(m ? { "content-range": `bytes ${start}-${size - 1}/${size}` } : {}) });
      const rs = fs.createReadStream(f, { start });
      if (name.endsWith(".blocks") && !m && !broken) {  // break off after ~half
        broken = true;
        let sent = 0;
        rs.on("data", (c) => { sent += c.length; if (sent > size / 2) { rs.destroy(); res.destroy(); } });
      }
      rs.pipe(res);
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${server.address().port}`;
    home = fs.mkdtempSync(path.join(os.tmpdir(), "realm-web-remote-"));
  });
  after(() => { server?.close(); fs.rmSync(home, { recursive: true, force: true }); });

  test("downloads the blocks (resuming a broken connection), equals the fp32 export, and a reload downloads nothing", async () => {
    const m = JSON.parse(fs.readFileSync(path.join(MODEL, "realm.json"), "utf8"));
    const packed = m.variants.fp32.packed;
    assert.ok(packed, "the pulled export has a packed fp32 download");
    const prev = process.env.REALM_WEB_HOME;
    process.env.REALM_WEB_HOME = home;
    const progress = [];
    try {
      const llm = await Realm.load({ model: url, engine: "wasm", wheel: WHEEL, onProgress: (p) => progress.push(p) });
      try {
        assert.equal(llm.info.packed, true);
        assert.equal(llm.info.dtype, "fp32");
        assert.ok(llm.info.modelDir.startsWith(home));
        const names = seen.map(([n]) => n);
        assert.ok(!names.includes(m.variants.fp32.file), "the 540 MB file is never fetched");
        assert.deepEqual(seen.filter(([n]) => n === packed.blocks).map(([, r]) => r !== null), [false, true], "resumed with a Range");
        assert.ok(llm.info.downloadedBytes >= packed.blocks_bytes && llm.info.downloadedBytes < packed.blocks_bytes + 4e6,
                  `${llm.info.downloadedBytes} bytes`);
        assert.ok(progress.some((p) => p.stage === "expand") && progress.some((p) => p.stage === "download" && p.got === p.total));
        for (const [i, p] of PROMPTS.entries()) {
          const r = await llm.generate(p, { maxTokens: MAX });
          assert.deepEqual(r.tokenIds, REF.fp32.greedy[i].tokenIds, p);
        }
      } finally { await llm.close(); }
      seen.length = 0;
      const again = await Realm.load({ model: url, engine: "wasm", wheel: WHEEL });
      try {
        assert.deepEqual(seen.map(([n]) => n), ["realm.json"]);
        assert.equal(again.info.packed, true);
        assert.deepEqual((await again.generate(PROMPTS[0], { maxTokens: MAX })).tokenIds, REF.fp32.greedy[0].tokenIds);
      } finally { await again.close(); }
      // the native engine from the same URL: its export (int4) has no packed form, so its file is fetched whole
      seen.length = 0;
      const native = await Realm.load({ model: url, engine: "native", wheel: WHEEL });
      try {
        assert.equal(native.info.packed, false);
        assert.ok(seen.some(([n]) => n === m.variants[native.info.dtype].file));
        assert.deepEqual((await native.generate(PROMPTS[0], { maxTokens: MAX })).tokenIds, REF[native.info.dtype].greedy[0].tokenIds);
      } finally { await native.close(); }
      // the fp16 export from the same URL (WebGPU's form): the same blocks again, expanded to float16
      // (and its lm_head transpose derived) on this side; onnxruntime-node runs it beside the local
      // fp16 file and gives the same tokens
      seen.length = 0;
      const half = await Realm.load({ model: url, engine: "native", dtype: "fp16", wheel: WHEEL });
      const local = await Realm.load({ model: MODEL, engine: "native", dtype: "fp16", wheel: WHEEL });
      try {
        assert.equal(half.info.packed, true);
        const names = seen.map(([n]) => n);
        assert.ok(names.includes(m.variants.fp16.packed.blocks) && !names.includes(m.variants.fp16.file), names.join(" "));
        assert.equal(fs.statSync(path.join(half.info.modelDir, m.variants.fp16.packed.weights)).size, m.variants.fp16.packed.weights_bytes);
        for (const p of PROMPTS.slice(0, 2)) {
          assert.deepEqual((await half.generate(p, { maxTokens: MAX })).tokenIds, (await local.generate(p, { maxTokens: MAX })).tokenIds, p);
        }
      } finally { await half.close(); await local.close(); }
      await assert.rejects(Realm.load({ model: `${url}/nothing-here`, wheel: WHEEL }), (e) => e.code === "model_not_found" && /HTTP 404/.test(e.message));
    } finally {
      if (prev === undefined) delete process.env.REALM_WEB_HOME; else process.env.REALM_WEB_HOME = prev;
    }
  });
});

describe("engine native: streaming, joins, cancellation, options", () => {
  let llm;
  before(() => { llm = engines.native.llm; });

  test("stream yields deltas that add up to the completion", async () => {
    const deltas = [];
    const it = llm.stream(PROMPTS[0], { maxTokens: MAX });
    let r;
    for (;;) {
      r = await it.next();
      if (r.done) break;
      deltas.push(r.value);
    }
    const c = r.value, g = await llm.generate(PROMPTS[0], { maxTokens: MAX });
    assert.equal(deltas.map((d) => d.text).join(""), c.text);
    assert.deepEqual(deltas.flatMap((d) => d.tokenIds), c.tokenIds);
    assert.deepEqual(c.tokenIds, g.tokenIds);
    assert.equal(deltas.at(-1).finishReason, c.finishReason);
    assert.ok(deltas.slice(0, -1).every((d) => d.finishReason === null));
  });

  test("requests that join a running one (staggered) still equal their results alone", async () => {
    const ref = REF[llm.info.dtype].greedy;
    const first = [];
    let late;
    const joined = new Promise((r) => { late = { resolve: r }; });
    const long = (async () => {
      for await (const d of llm.stream(PROMPTS[0], { maxTokens: MAX })) {
        first.push(...d.tokenIds);
        if (first.length === 3) late.resolve();
      }
    })();
    await joined;
    const rest = await Promise.all(PROMPTS.slice(1).map((p) => llm.generate(p, { maxTokens: MAX })));
    await long;
    assert.deepEqual(first, ref[0].tokenIds);
    rest.forEach((r, i) => assert.deepEqual(r.tokenIds, ref[i + 1].tokenIds, PROMPTS[i + 1]));
  });

  test("leaving a stream early cancels it; an AbortSignal rejects with code aborted", async () => {
    let n = 0;
    for await (const d of llm.stream("Tell me a long story about a dragon.", { maxTokens: 200 })) if (++n === 3) break;
    assert.equal(n, 3);
    const ac = new AbortController();
    let seen = 0;
    const stream = llm.stream("Tell me a long story about a dragon.", { maxTokens: 200, signal: ac.signal });
    await assert.rejects((async () => { for await (const d of stream) if (++seen === 2) ac.abort(); })(),
                         (e) => e instanceof RealmEngineError && e.code === "aborted");
    await assert.rejects(llm.generate("Hi", { signal: AbortSignal.abort() }), { code: "aborted" });
    assert.equal(llm.stats().inflight, 0);
    assert.match((await llm.generate(PROMPTS[0], { maxTokens: MAX })).text, /Paris/); // still serves
  });

  test("options: stop strings, chat messages, system, raw text and token ids", async () => {
    const r = await llm.generate(PROMPTS[0], { maxTokens: MAX, stop: [" Paris"] });
    assert.equal(r.finishReason, "stop");
    assert.ok(!r.text.includes("Paris") && r.text.length > 0, r.text);
    const chat = await llm.generate([{ role: "user", content: PROMPTS[0] }], { maxTokens: MAX });
    assert.deepEqual(chat.tokenIds, REF[llm.info.dtype].greedy[0].tokenIds);
    const ids = await llm.generate(chat.promptTokenIds, { maxTokens: MAX });
    assert.deepEqual(ids.tokenIds, chat.tokenIds);
    const sys = await llm.generate(PROMPTS[0], { maxTokens: 4, system: "You are a pirate." });
    assert.notDeepEqual(sys.promptTokenIds, chat.promptTokenIds);
    const raw = await llm.generate("1, 2, 3, 4,", { raw: true, maxTokens: 4, ignoreEos: true });
    assert.equal(raw.promptTokenIds.length < 12, true);
    assert.equal(raw.tokenIds.length, 4);
    assert.equal(raw.finishReason, "length");
  });

  test("bad options and prompts: RealmEngineError with a helpful message", async () => {
    const bad = async (p, o, code, re) => {
      await assert.rejects(llm.generate(p, o), (e) => {
        assert.ok(e instanceof RealmEngineError && e instanceof RealmError && e instanceof Error, String(e));
        assert.equal(e.code, code, e.message);
        assert.equal(e.status, null);
        assert.match(e.message, re);
        return true;
      });
    };
    for (const v of [-1, 1.5, "10", NaN, 10 ** 9])
      await bad("Hi", { maxTokens: v }, "bad_option", /maxTokens must be/);
    await bad("Hi", { max_tokens: 5 }, "bad_option", /unknown generate option "max_tokens" \(known: maxTokens, /);
    await bad("Hi", { temperature: -1 }, "bad_option", /temperature must be a number >= 0/);
    await bad("Hi", { topP: 0 }, "bad_option", /topP must be a number in \(0, 1\]/);
    await bad("Hi", { stop: [""] }, "bad_option", /stop must be/);
    await bad("Hi", "fast", "bad_option", /options must be an object/);
    await bad("", {}, "bad_prompt", /the prompt is empty/);
    await bad([], {}, "bad_prompt", /non-empty string, a list of chat messages/);
    await bad([10 ** 6], {}, "bad_prompt", /token ids must be in \[0, 49152\)/); // raised by the Python core
    assert.match((await llm.generate("Hi", { maxTokens: 2 })).text, /./);
  });
});

// LoRA: random PEFT adapters (tests/adapters.py) that change the answers; the native Python
// engine's greedy ids of each (prompt, adapter) alone are the reference.
const LORA_PY = `
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
from adapters import write_random_adapter
from realm_web import LLM
model, out, dtypes, prompts, max_tokens = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
arch = json.loads((Path(model) / "realm.json").read_text())["architecture"]
write_random_adapter(out / "a1", arch, r=16, alpha=32, seed=1, b_scale=0.08)
write_random_adapter(out / "a2", arch, r=8, alpha=16, seed=2, b_scale=0.1, targets=("q_proj", "v_proj", "down_proj"))
tiny = dict(arch, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1, head_dim=32)
write_random_adapter(out / "other-base", tiny, r=4)
ref = {}
for dtype in dtypes:
    llm = LLM(model, dtype=dtype, max_slots=2, max_length=512)
    llm.load_adapter("a1", out / "a1")
    llm.load_adapter("a2", out / "a2")
    ref[dtype] = {a or "base": [llm.generate(p, max_tokens=max_tokens, adapter=a)[0].token_ids for p in prompts]
                  for a in (None, "a1", "a2")}
    llm.close()
print(json.dumps(ref))
`;

describe("LoRA adapters (Node: native and wasm engines)", () => {
  const PS = PROMPTS.slice(0, 2), N = 16;
  let dir, ref;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "realm-web-lora-"));
    const dtypes = [...new Set([preferred(MODEL, "wasm"), preferred(MODEL, "cpu")])];
    const r = spawnSync(PYTHON, ["-c", LORA_PY, MODEL, dir, JSON.stringify(dtypes), JSON.stringify(PS), String(N)],
                        { cwd: ROOT, encoding: "utf8", maxBuffer: 1 << 26 });
    assert.equal(r.status, 0, r.stderr);
    ref = JSON.parse(r.stdout.trim().split("\n").pop());
    for (const d of Object.values(ref)) // the adapters are not no-ops
      assert.ok(!same(d.a1, d.base) && !same(d.a2, d.base) && !same(d.a1, d.a2), JSON.stringify(d));
  });

  for (const engine of ["native", "wasm"]) {
    test(`${engine}: base and two adapters mixed in one batch give the native Python engine's greedy ids`, async () => {
      const llm = engines[engine].llm;
      assert.equal(llm.info.adapters, true);
      assert.deepEqual(await llm.loadAdapter("a1", path.join(dir, "a1")),
                       { name: "a1", rank: 16, targets: ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"] });
      await llm.loadAdapter("a2", path.join(dir, "a2"));
      assert.deepEqual(llm.adapters(), ["a1", "a2"]);
      const want = ref[llm.info.dtype];
      const jobs = [];
      for (const a of [null, "a1", "a2"]) PS.forEach((p, i) => jobs.push([a, i]));
      const s0 = llm.stats();
      const got = await Promise.all(jobs.map(([a, i]) => llm.generate(PS[i], { maxTokens: N, adapter: a })));
      jobs.forEach(([a, i], j) => assert.deepEqual(got[j].tokenIds, want[a ?? "base"][i], `${a} ${PS[i]}`));
      assert.equal(llm.stats().maxRows >= 6, true, "the six requests decoded together");
      assert.ok(llm.stats().batchedRuns > s0.batchedRuns);
      // base rows run alone on the plain graph still equal (the LoRA graph adds exactly 0.0)
      assert.deepEqual((await llm.generate(PS[0], { maxTokens: N })).tokenIds, want.base[0]);
    });
  }

  test("loadAdapter takes an http(s) URL too (a PEFT directory's URL)", async () => {
    const http = await import("node:http");
    const seen = [];
    const server = http.createServer((req, res) => {
      seen.push([req.url, req.headers.authorization]);
      const f = path.join(dir, decodeURIComponent(req.url));
      if (!f.startsWith(dir) || !fs.existsSync(f) || fs.statSync(f).isDirectory()) { res.writeHead(404); res.end(); return; }
      res.writeHead(200, { "content-type": "application/octet-stream" });
      res.end(fs.readFileSync(f));
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${server.address().port}`;
    try {
      const llm = engines.native.llm;
      await llm.loadAdapter("a2-web", `${url}/a2/`, { headers: { authorization: "Bearer k" } });
      assert.deepEqual(seen.map(([u]) => u), ["/a2/adapter_config.json", "/a2/adapter_model.safetensors"]);
      assert.ok(seen.every(([, h]) => h === "Bearer k"));
      const r = await llm.generate(PS[0], { maxTokens: N, adapter: "a2-web" });
      assert.deepEqual(r.tokenIds, ref[llm.info.dtype].a2[0]);
      await assert.rejects(llm.loadAdapter("x", `${url}/missing/`), (e) => e.code === "bad_adapter" && e.field === "path" && /HTTP 404/.test(e.message));
      await llm.unloadAdapter("a2-web");
    } finally { server.close(); }
  });

  test("bad adapters and names: typed errors, and the engine keeps serving", async () => {
    const llm = engines.native.llm;
    if (!llm.adapters().includes("a1")) await llm.loadAdapter("a1", path.join(dir, "a1"));
    const bad = async (call, code, re, field) => {
      await assert.rejects(call, (e) => {
        assert.ok(e instanceof RealmEngineError, String(e));
        assert.equal(e.code, code, e.message);
        assert.match(e.message, re);
        if (field !== undefined) assert.equal(e.field, field);
        return true;
      });
    };
    await bad(llm.generate("Hi", { adapter: "nope" }), "adapter_not_found", /no adapter 'nope' is loaded/);
    await bad(llm.generate("Hi", { adapter: 3 }), "bad_option", /adapter must be the name of a loaded adapter/);
    await bad(llm.loadAdapter("x", path.join(dir, "missing")), "bad_adapter", /no such adapter/, "path");
    await bad(llm.loadAdapter("x", path.join(dir, "other-base")), "bad_adapter", /another base model/, "hidden_size");
    await bad(llm.loadAdapter(llm.info.name, path.join(dir, "a1")), "bad_adapter", /base model's name/, "name");
    await bad(llm.unloadAdapter("nope"), "adapter_not_found", /no adapter 'nope'/);
    const it = llm.stream(PROMPTS[3], { maxTokens: 64, adapter: "a1", ignoreEos: true });
    await it.next(); // running on a1
    await bad(llm.unloadAdapter("a1"), "adapter_in_use", /cannot unload adapter .a1.: 1 requests use it/);
    await it.return();
    await llm.unloadAdapter("a1");
    assert.ok(!llm.adapters().includes("a1"));
    assert.match((await llm.generate(PROMPTS[0], { maxTokens: 12 })).text, /Paris/);
  });
});

describe("loading errors", () => {
  const load = async (o, code, re) => {
    await assert.rejects(Realm.load({ wheel: WHEEL, ...o }), (e) => {
      assert.ok(e instanceof RealmEngineError && e instanceof RealmError, String(e));
      assert.equal(e.code, code, e.message);
      assert.match(e.message, re);
      return true;
    });
  };

  test("a missing model directory, or one without realm.json", async () => {
    await load({ model: "/nonexistent/realm-model" }, "model_not_found", /\/nonexistent\/realm-model: no such model directory/);
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), "realm-web-empty-"));
    await load({ model: empty }, "model_not_found", /not a realm-web model directory \(no realm\.json/);
    const old = process.env.REALM_WEB_HOME;
    process.env.REALM_WEB_HOME = empty;
    try { await load({}, "model_not_found", /models\/smollm2-135m-instruct: no such model directory \(the default model: run `realm-web pull`/); }
    finally { if (old === undefined) delete process.env.REALM_WEB_HOME; else process.env.REALM_WEB_HOME = old; }
  });

  test("bad load options", async () => {
    await load({ model: MODEL, engine: "cuda" }, "bad_option", /load option engine must be "wasm", "native" or "webgpu", got "cuda"/);
    await load({ modelDir: MODEL }, "bad_option", /unknown load option "modelDir" \(known: model, engine, /);
    await load({ model: MODEL, dtype: "fp64" }, "bad_option", /no fp64 export \(have: .*fp32/);
    await load({ model: MODEL, threads: 0 }, "bad_option", /threads must be an integer >= 1/);
    await load({ model: MODEL, engine: "wasm", threads: 3 }, "bad_option", /already runs with 1 thread/);
    await load({ model: MODEL, wheel: path.join(MODEL, "realm.json") }, "engine_unavailable", /cannot start Pyodide with .*not a zip file/);
    await load({ model: MODEL, engine: "webgpu", gpu: {} }, "bad_option", /load option gpu must be a GPU object \(navigator\.gpu, or dawn\.node's create\(\)\)/);
    await load({ model: MODEL, engine: "webgpu", dtype: "int4" }, "bad_option", /engine "webgpu" runs the realm kernels over the export's GGUF blocks \(dtype "fp32"\), not int4/);
  });

  test("engine webgpu without WebGPU in this Node: a clear engine_unavailable", async (t) => {
    // this package installs no dawn.node (npm `webgpu`); tests/test_node_webgpu.py runs this engine
    // end to end with it (tests/node's copy, on SwiftShader), bench/webgpu_realm_node.mjs on a GPU
    let dawn = true;
    try { await import("webgpu"); } catch { dawn = false; }
    if (dawn || globalThis.navigator?.gpu) { t.skip("this Node has WebGPU"); return; }
    await load({ model: MODEL, engine: "webgpu" }, "engine_unavailable", /engine "webgpu" needs WebGPU in Node: `npm install webgpu` \(dawn\.node\)/);
  });

  test("a closed Realm refuses work", async () => {
    const llm = await Realm.load({ model: MODEL, engine: "native", wheel: WHEEL, threads: 1 });
    const running = llm.generate("Tell me a long story about a dragon.", { maxTokens: 200 });
    await new Promise((r) => setTimeout(r, 300));
    await llm.close();
    await assert.rejects(running, { code: "closed" });
    await assert.rejects(llm.generate("Hi"), (e) => e.code === "closed" && /closed/.test(e.message));
  });
});

test("a runtime failure under a step fails the requests in flight (code runtime), not a hang", async () => {
  // Fault injection: the real bridge's step throws once, as onnxruntime would on a broken session.
  const { Bridge } = await import("../src/bridge.mjs");
  const llm = await Realm.load({ model: MODEL, engine: "native", wheel: WHEEL, threads: 1 });
  const real = Bridge.prototype._step;
  let n = 0;
  Bridge.prototype._step = async function (json) {
    if (++n === 5) throw new Error("injected: the session failed");
    return real.call(this, json);
  };
  try {
    const rs = await Promise.allSettled(PROMPTS.slice(0, 2).map((p) => llm.generate(p, { maxTokens: MAX })));
    for (const r of rs) {
      assert.equal(r.status, "rejected");
      assert.ok(r.reason instanceof RealmEngineError && r.reason.code === "runtime", String(r.reason));
      assert.match(r.reason.message, /the engine failed .*injected: the session failed/);
    }
    await assert.rejects(llm.generate("Hi"), { code: "runtime" });
  } finally {
    Bridge.prototype._step = real;
    await llm.close();
  }
});

test("the package's exports match its type declarations", () => {
  const dts = fs.readFileSync(path.join(here, "..", "types", "index.d.ts"), "utf8");
  const declared = [...dts.matchAll(/^export (?:class|function|const) (\w+)/gm)].map((m) => m[1]).sort();
  const exported = Object.keys(pkg).sort();
  for (const name of exported) assert.ok(declared.includes(name), `${name} is exported but not declared`);
  const pj = JSON.parse(fs.readFileSync(path.join(here, "..", "package.json"), "utf8"));
  assert.equal(pj.types, "./types/index.d.ts");
  assert.equal(pj.dependencies["onnxruntime-node"], pj.dependencies["onnxruntime-web"]);
});

test("examples/paris/nodejs-wasm prints Paris", () => {
  const r = spawnSync(process.execPath, [path.join(ROOT, "examples", "paris", "nodejs-wasm", "index.mjs"), MODEL],
                      { encoding: "utf8", env: { ...process.env, REALM_WEB_WHEEL: WHEEL }, timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Paris/);
});
