"""The web page in real headless Chromium (Debian's, driven by Playwright): Pyodide runs the same
Python core, onnxruntime-web (WASM) runs the model, in a Web Worker."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from realm_web import LLM, load_manifest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--enable-unsafe-webgpu"]
QUESTION = "What is the capital of France?"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                           "population": {"type": "integer", "minimum": 0}},
          "required": ["city", "population"], "additionalProperties": False}
JSON_ASK = "Give the largest city of France and its population as JSON."


@pytest.fixture(scope="module")
def site(model_dir: Path) -> Iterator[str]:
    if not Path(CHROMIUM).exists() or not (ROOT / "wasm" / "node_modules" / "pyodide").exists():
        pytest.fail("Chromium and wasm/node_modules are needed: .ci/run and `make web` install them")
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_web.py")], check=True, capture_output=True)
    sys.path.insert(0, str(ROOT / "tools"))
    from serve_web import make_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = make_server(port, model_dir)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    srv.shutdown()


@pytest.fixture(scope="module")
def browser_run(site: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("profile")  # a persistent profile: the Cache API keeps the model
    requests: list[str] = []
    sizes: list[tuple[str, int, bool]] = []  # (url, body bytes, after the reload)
    out: dict[str, Any] = {"reloaded": False}
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=ARGS, headless=True)
        ctx.on("request", lambda r: requests.append(r.url))
        ctx.on("requestfinished", lambda r: sizes.append((r.url, r.sizes()["responseBodySize"], out["reloaded"])))
        page = ctx.new_page()
        # prefix caching off: every request here is compared with a fresh native run (the chat test below turns it on)
        page.goto(f"{site}/?backend=wasm&threads=2&prefix_caching=0")
        out["info"] = page.evaluate("() => window.realm.ready")
        out["answer"] = page.evaluate(f"() => window.realm.generate({json.dumps(QUESTION)}, {{maxTokens: 24}})")
        out["deltas"] = page.evaluate(
            "async () => { const ds = []; const r = await window.realm.stream('Write a haiku about the sea.',"
            " {maxTokens: 12}, (d) => ds.push(d)); return {r, ds}; }")
        out["structured"] = page.evaluate(
            f"() => window.realm.generate({json.dumps(JSON_ASK)}, {{maxTokens: 40, jsonSchema: {json.dumps(SCHEMA)}}})")
        out["ui_status"] = page.inner_text("#statusText")
        page.reload()
        out["reloaded"] = True
        out["info_reload"] = page.evaluate("() => window.realm.ready")
        out["answer_reload"] = page.evaluate(f"() => window.realm.generate({json.dumps(QUESTION)}, {{maxTokens: 24}})")
        ctx.close()
    out["requests"] = requests
    out["sizes"] = sizes
    return out


def test_page_answers_paris_on_wasm(browser_run: dict[str, Any]) -> None:
    assert browser_run["info"]["backend"] == "wasm" and browser_run["info"]["crossOriginIsolated"]
    assert "Paris" in browser_run["answer"]["text"]
    assert "Ready" in browser_run["ui_status"]


def test_browser_greedy_tokens_equal_native(browser_run: dict[str, Any], model_dir: Path) -> None:
    dtype = browser_run["info"]["dtype"]
    assert dtype == load_manifest(model_dir).variant_for("wasm").dtype
    c = LLM(model_dir, dtype=dtype, max_slots=1, max_length=256).generate(QUESTION, max_tokens=24)[0]
    assert browser_run["answer"]["promptTokenIds"] == c.prompt_token_ids
    assert browser_run["answer"]["tokenIds"] == c.token_ids


def test_structured_output_in_the_page_equals_native(browser_run: dict[str, Any], model_dir: Path) -> None:
    """A JSON schema through window.realm: the core's masks in Pyodide, applied by the bridge on
    WASM, give the native engine's tokens, and the text validates."""
    import jsonschema

    r = browser_run["structured"]
    c = LLM(model_dir, dtype=browser_run["info"]["dtype"], max_slots=1, max_length=256).generate(
        JSON_ASK, max_tokens=40, json_schema=SCHEMA)[0]
    assert r["tokenIds"] == c.token_ids
    if c.finish_reason == "stop":
        jsonschema.validate(json.loads(r["text"]), SCHEMA)


def test_multi_turn_chat_in_the_page_reuses_the_conversation(site: str, model_dir: Path) -> None:
    """The page's default: prefix caching. Each turn of a chat after the first computes only the
    new message (the stats say how many prompt tokens the cache gave), and the turns' token ids
    equal the native engine's with prefix caching over the same turns."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "tests"))
    from test_llm import CHAT_TURNS, chat_turns

    js = """async (turns) => {
      const info = await window.realm.ready;
      const msgs = [], ids = [];
      for (const t of turns) {
        msgs.push({role: "user", content: t});
        const r = await window.realm.generate(msgs, {maxTokens: 32});
        ids.push(r.tokenIds);
        msgs.push({role: "assistant", content: r.text});
      }
      return {info, ids, stats: await window.realm.stats()};
    }"""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = b.new_page()
        page.goto(f"{site}/?backend=wasm&threads=2")
        got = page.evaluate(js, CHAT_TURNS)
        b.close()
    assert got["info"]["prefix_caching"] is True
    want = chat_turns(LLM(model_dir, dtype=got["info"]["dtype"], max_slots=2, max_length=1024, prefix_caching=True))
    assert got["ids"] == want
    st = got["stats"]["prefix"]
    assert st["hits"] == len(CHAT_TURNS) - 1 and st["cached_tokens"] > st["prompt_tokens"] / 2, st


def open_chat(p: Any, site: str) -> tuple[Any, Any, list[str]]:
    """Chromium on the chat page (WASM, 2 threads), ready for input: (browser, page, page errors)."""
    b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    page = b.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{site}/?backend=wasm&threads=2")
    page.wait_for_function("() => !document.querySelector('#input').disabled", timeout=120_000)
    return b, page, errors


def test_the_chat_ui_with_speculative_decoding_shows_its_acceptance(site: str) -> None:
    """The page as a user drives it: the Speculative box, a question typed and sent; the answer
    streams into the chat, and the footer shows tokens/s and how many drafted tokens were accepted."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b, page, errors = open_chat(p, site)
        page.check("#speculative")
        page.wait_for_function("() => !document.querySelector('#input').disabled && window.realm.info?.speculative",
                               timeout=120_000)
        page.fill("#input", "Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown fox")
        page.press("#input", "Enter")
        page.wait_for_function("() => document.querySelector('#speed').textContent.includes('speculative')", timeout=120_000)
        answer = page.inner_text(".msg.assistant")
        speed = page.inner_text("#speed")
        b.close()
    assert not errors, errors
    assert answer.strip() and "tokens/s" in speed and "drafted tokens accepted" in speed, speed


def test_the_chat_ui_answers_as_json_following_a_schema(site: str, model_dir: Path) -> None:
    """The page's "Answer as JSON" box as a user drives it: a schema that is not JSON is refused
    in the status line and nothing is sent; a schema typed there makes the streamed answer JSON
    that validates, with the native engine's text for the same chat and schema."""
    import jsonschema
    from playwright.sync_api import sync_playwright

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "country": {"type": "string", "maxLength": 20}},
              "required": ["city", "country"], "additionalProperties": False}
    ask = "Which city is the capital of France? Answer as JSON."
    with sync_playwright() as p:
        b, page, errors = open_chat(p, site)
        page.click("#format summary")
        page.fill("#schema", '{"type": "object", ')
        page.fill("#input", ask)
        page.press("#input", "Enter")
        refused = page.inner_text("#statusText")
        sent = page.locator(".msg").count()
        page.fill("#schema", json.dumps(schema))
        page.press("#input", "Enter")
        page.wait_for_function("() => document.querySelectorAll('.msg.assistant').length === 1 && "
                               "!document.querySelector('#input').disabled", timeout=180_000)
        answer = page.inner_text(".msg.assistant")
        dtype = page.evaluate("() => window.realm.info.dtype")
        b.close()
    assert not errors, errors
    assert "not valid JSON" in refused and sent == 0, (refused, sent)
    jsonschema.validate(json.loads(answer), schema)
    c = LLM(model_dir, dtype=dtype, max_slots=1, max_length=512).generate(
        [{"role": "user", "content": ask}], max_tokens=256, json_schema=schema)[0]
    assert answer == c.text


def test_stream_deltas_in_the_page(browser_run: dict[str, Any]) -> None:
    r, ds = browser_run["deltas"]["r"], browser_run["deltas"]["ds"]
    assert "".join(d["text"] for d in ds) == r["text"] and len(ds) >= 2
    assert [t for d in ds for t in d["tokenIds"]] == r["tokenIds"]


def test_no_request_leaves_the_origin(browser_run: dict[str, Any], site: str) -> None:
    outside = [u for u in browser_run["requests"] if not (u.startswith(site + "/") or u.startswith(("data:", "blob:")))]
    assert not outside, outside[:5]


def test_reload_serves_the_model_from_the_browser_cache(browser_run: dict[str, Any]) -> None:
    assert browser_run["info"]["fromCache"] is False
    assert browser_run["info_reload"]["fromCache"] is True
    assert browser_run["answer_reload"]["tokenIds"] == browser_run["answer"]["tokenIds"]
    after = [(u, n) for u, n, reloaded in browser_run["sizes"] if reloaded and "/models/default/" in u]
    assert sum(n for _, n in after) < 4_000_000, after  # the manifest and tokenizer only: no weights again


def test_the_compact_download_is_the_packed_blocks(browser_run: dict[str, Any], model_dir: Path) -> None:
    """WASM takes the fp32 graph, but downloads the GGUF's blocks (export/packed.py), expanded in
    the worker: the bytes over the wire, counted by the browser, are a fifth of the fp32 file."""
    info, m = browser_run["info"], load_manifest(model_dir)
    packed = m.variants["fp32"].packed
    assert info["packed"] is True and info["dtype"] == "fp32" and packed
    model_bytes = sum(n for u, n, reloaded in browser_run["sizes"] if not reloaded and "/models/default/" in u)
    assert packed["blocks_bytes"] <= model_bytes < packed["blocks_bytes"] + 4_000_000, model_bytes
    assert model_bytes < m.variants["fp32"].bytes / 5
    assert not [u for u, _, _ in browser_run["sizes"] if u.endswith("/" + m.variants["fp32"].file)]


def test_page_answers_paris_on_webgpu_realm_kernels(site: str, model_dir: Path) -> None:
    """WebGPU's default in the tab: realm-web's own kernels over the GGUF blocks (SwiftShader here,
    software: a few tokens only), greedy ids equal to the native fp32 engine's."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = b.new_page()
        page.goto(f"{site}/?backend=webgpu")
        info = page.evaluate("() => window.realm.ready")
        r = page.evaluate(f"() => window.realm.generate({json.dumps(QUESTION)}, {{maxTokens: 6}})")
        b.close()
    m = load_manifest(model_dir)
    assert info["backend"] == "webgpu" and info["kernels"] == "realm" and info["dtype"] == "fp32", info
    assert info["file"] == m.variants["fp32"].packed["blocks"] and info["lanes"] == 1  # a CPU adapter: a thread per unit
    native = LLM(model_dir, dtype="fp32", max_slots=1, max_length=256).generate(QUESTION, max_tokens=6)[0]
    assert r["promptTokenIds"] == native.prompt_token_ids
    assert r["tokenIds"] == native.token_ids, (r["text"], native.text)
    assert "Paris" in r["text"], r["text"]


def test_page_answers_paris_on_webgpu_onnxruntime(site: str, model_dir: Path) -> None:
    # ?kernels=ort: onnxruntime-web's WebGPU EP, through SwiftShader (software): a few tokens only.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = b.new_page()
        page.goto(f"{site}/?backend=webgpu&kernels=ort")
        info = page.evaluate("() => window.realm.ready")
        r = page.evaluate(f"() => window.realm.generate({json.dumps(QUESTION)}, {{maxTokens: 8}})")
        b.close()
    assert info["kernels"] == "ort", info
    # the manifest's WebGPU export (fp16), or int8 where the adapter has no shader-f16 (SwiftShader)
    want = load_manifest(model_dir).variant_for("webgpu").dtype
    assert info["backend"] == "webgpu" and info["dtype"] == (want if info["shaderF16"] or want != "fp16" else "int8"), info
    assert info["packed"] == bool(load_manifest(model_dir).variants[info["dtype"]].packed)
    assert "Paris" in r["text"], r["text"]


PASSAGE = ("The city council met on Tuesday evening to review the annual budget. It approved funding for the new "
           "public library on Elm Street and postponed the road repairs until next spring.")


def test_speculative_decoding_in_the_page(site: str) -> None:
    """window.realm.setSpeculative("ngram"): the tab's output is the same, greedy and seeded."""
    from playwright.sync_api import sync_playwright

    prompt = json.dumps(f"Repeat the following text exactly, word for word:\n\n{PASSAGE}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = b.new_page()
        page.goto(f"{site}/?backend=wasm&threads=2")
        page.evaluate("() => window.realm.ready")
        js = (f"async () => {{ const g = await window.realm.generate({prompt}, {{maxTokens: 40}});"
              f" const s = await window.realm.generate({prompt}, {{maxTokens: 24, temperature: 0.8, topP: 0.9, seed: 3}});"
              " return [g.tokenIds, s.tokenIds]; }")
        plain = page.evaluate(js)
        assert page.evaluate("() => window.realm.setSpeculative({method: 'ngram', numSpeculativeTokens: 4})")["method"] == "ngram"
        spec = page.evaluate(js)
        stats = page.evaluate("() => window.realm.stats()")
        costs = page.evaluate("() => window.realm.info.stepCosts")
        with pytest.raises(Exception, match="num_speculative_tokens"):
            page.evaluate("() => window.realm.setSpeculative({method: 'ngram', numSpeculativeTokens: 99})")
        b.close()
    assert spec == plain
    assert stats["speculative"]["accepted_tokens"] > 0, stats
    assert costs["run_seconds"] > 0 and costs["token_seconds"] > 0, costs  # the tab's policy priced by its own steps


def _ort_greedy(model_dir: Path, ids: list[int], n: int) -> tuple[list[int], list["Any"]]:
    """onnxruntime CPU on the fp32 export, whole sequences recomputed: n greedy tokens after ids,
    and the logits at every position of ids + those tokens."""
    import numpy as np
    import onnxruntime as ort

    s = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    m = load_manifest(model_dir)
    seq = list(ids)
    for _ in range(n + 1):
        feeds = {"input_ids": np.array([seq], np.int64), "attention_mask": np.ones((1, len(seq)), np.int64),
                 "logits_index": np.arange(len(seq), dtype=np.int64)[None]}
        for i in range(m.num_layers):
            for k in ("key", "value"):
                feeds[f"past_key_values.{i}.{k}"] = np.zeros((1, m.num_kv_heads, 0, m.head_dim), np.float32)
        logits = s.run(["logits"], feeds)[0][0]
        if len(seq) == len(ids) + n:
            return seq[len(ids):], list(logits)
        seq.append(int(np.argmax(logits[-1])))
    raise AssertionError


def test_realm_kernels_step_contract(site: str, model_dir: Path) -> None:
    """realm-web's WebGPU kernels (gpu_bridge.mjs) on the step contract: two prompts of different
    lengths in one step (one row greedy on the GPU, one with logprobs, top-3 and prompt scores from
    read-back logits), both decoding in one step, a rollback with a two-token verify row, and a
    copied prefix (plan.copies) decoding in a third slot; against onnxruntime CPU's fp32 export."""
    import numpy as np
    from playwright.sync_api import sync_playwright
    from realm_web.engines.ort_web import bridge_config

    pa, pb = [1, 9690, 198, 2683, 359, 253], [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47]
    cfg = bridge_config(load_manifest(model_dir), "fp32", "webgpu")
    js = """async ([cfg, pa, pb]) => {
      const { GpuBridge } = await import("./realm/gpu_bridge.mjs");
      const { kernelDevice } = await import("./realm/kernels.mjs");
      const device = await kernelDevice(await navigator.gpu.requestAdapter());
      const blocks = new Uint8Array(await (await fetch("./models/default/" + cfg.packed.blocks)).arrayBuffer());
      const br = await GpuBridge.create(device, blocks, cfg);
      const G = { temperature: 0, top_k: 0, top_p: 1, min_p: 0, repetition_penalty: 1, logprobs: false, top_logprobs: 0 };
      const L = { ...G, logprobs: true, top_logprobs: 3 };
      const step = async (plan) => JSON.parse(await br.step(JSON.stringify(plan)));
      const out = [];
      out.push(await step({ seqs: [[1, 0, 0, pa, 1, []], [2, 1, 0, pb, 1, [], [pb[1], pb[2]]]],
                            new: [{ id: 1, slot: 0, sampling: G, adapter: null, entry: 0 }, { id: 2, slot: 1, sampling: L, adapter: null, entry: 0 }] }));
      const a1 = out[0].tokens[1][0], b1 = out[0].tokens[2][0];
      out.push(await step({ seqs: [[1, 0, pa.length, [a1], 1, []], [2, 1, pb.length, [b1], 1, []]] }));
      const a2 = out[1].tokens[1][0], b2 = out[1].tokens[2][0];
      out.push(await step({ seqs: [[1, 0, pa.length, [a1, a2], 2, []]] }));
      out.push(await step({ seqs: [[3, 2, pb.length + 1, [b2], 1, []]], new: [{ id: 3, slot: 2, sampling: G, adapter: null, entry: 0 }],
                            copies: [[1, 2, pb.length + 1]] }));
      out.push(br.timings);
      return out;
    }"""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = b.new_page()
        page.goto(f"{site}/?backend=wasm")
        s1, s2, s3, s4, timings = page.evaluate(js, [cfg, pa, pb])
        b.close()
    ta, la = _ort_greedy(model_dir, pa, 3)
    tb, lb = _ort_greedy(model_dir, pb, 3)
    assert [s1["tokens"]["1"], s2["tokens"]["1"], s3["tokens"]["1"]] == [ta[:1], ta[1:2], ta[1:3]]
    assert [s1["tokens"]["2"], s2["tokens"]["2"], s4["tokens"]["3"]] == [tb[:1], tb[1:2], tb[2:3]]

    def logprobs(x: Any) -> Any:
        x = np.asarray(x, np.float64)
        return x - (x.max() + np.log(np.exp(x - x.max()).sum()))

    want = logprobs(lb[len(pb) - 1])
    assert abs(s1["logprobs"]["2"][0] - want[tb[0]]) < 1e-3
    top = s1["top"]["2"][0]
    assert [t for t, _ in top] == list(np.argsort(-want, kind="stable")[:3])
    assert all(abs(lp - want[t]) < 1e-3 for t, lp in top)
    assert all(abs(s1["scores"]["2"][j] - logprobs(lb[j])[pb[j + 1]]) < 1e-3 for j in range(2))
    assert "1" not in s1["logprobs"]  # the greedy row asked for none
    assert timings["forwards"] == 4 and timings["maxRows"] == 2
