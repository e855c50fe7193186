"""The same Python core in Pyodide, on onnxruntime-web (WASM), in Node through the npm package's
Realm API: real Node, real Pyodide, real onnxruntime-web; greedy and seeded tokens equal the native
engine's on the same export. (The package's own suite is wasm/test, run by `make test-node`.)"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from realm_web import LLM, load_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm import CHAT_TURNS, chat_turns  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "wasm"
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]
SEEDED = [{"maxTokens": 24, "temperature": 0.9, "topP": 0.95, "topK": 40, "seed": 11},
          {"maxTokens": 16, "temperature": 1.2, "minP": 0.05, "repetitionPenalty": 1.3, "seed": 5},
          {"maxTokens": 16, "temperature": 0.7, "seed": 123}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                          "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
CONSTRAINED = [{"maxTokens": 40, "jsonSchema": PERSON},
               {"maxTokens": 40, "jsonSchema": PERSON, "temperature": 1.0, "seed": 9},
               {"maxTokens": 8, "choice": ["Paris", "Rome"], "logprobs": True, "topLogprobs": 2},
               {"maxTokens": 20, "regex": "[A-Z][a-z]+, [0-9]{4}", "temperature": 0.8, "seed": 2}]
NATIVE = {"maxTokens": "max_tokens", "jsonSchema": "json_schema", "topLogprobs": "top_logprobs", "topP": "top_p", "topK": "top_k", "minP": "min_p",
          "repetitionPenalty": "repetition_penalty"}

SCRIPT = """
import { Realm } from "%s";
const [modelDir, wheel, prompts, seededJson] = process.argv.slice(2);
const SEEDED = JSON.parse(seededJson);
const CONSTRAINED = %s;
const realm = await Realm.load({ model: modelDir, wheel, engine: "wasm", threads: 1 });
const out = [];
for (const p of JSON.parse(prompts)) out.push(await realm.generate(p, { maxTokens: 24 }));
const seeded = [];
for (const o of SEEDED) seeded.push(await realm.generate(JSON.parse(prompts)[1], o));
const deltas = [];
const it = realm.stream(JSON.parse(prompts)[0], { maxTokens: 24 });
let r;
while (!(r = await it.next()).done) deltas.push(r.value);
const streamed = r.value;
const constrained = [];
for (const o of CONSTRAINED) constrained.push(await realm.generate(JSON.parse(prompts)[0], o));
let refused = null;
try { await realm.generate("x", { jsonSchema: { type: "integer", multipleOf: 3 } }); } catch (e) { refused = { code: e.code, message: e.message }; }
await realm.close();
// a multi-turn chat with prefix caching: each turn sends the conversation so far
const chatRealm = await Realm.load({ model: modelDir, wheel, engine: "wasm", threads: 1, prefixCaching: true });
const msgs = [], chat = [];
for (const t of %s) {
  msgs.push({ role: "user", content: t });
  const c = await chatRealm.generate(msgs, { maxTokens: 32 });
  chat.push(c.tokenIds);
  msgs.push({ role: "assistant", content: c.text });
}
const chatStats = chatRealm.stats().prefix;
await chatRealm.close();
console.log(JSON.stringify({ info: realm.info, out, streamed, deltas, seeded, constrained, refused, chat, chatStats }));
"""


@pytest.fixture(scope="module")
def node_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    if shutil.which("node") is None or not (WASM / "node_modules" / "pyodide").exists():
        pytest.fail("node and wasm/node_modules are needed: `make web` installs them")
    tmp = tmp_path_factory.mktemp("node")
    wheel = subprocess.run([sys.executable, str(ROOT / "tools" / "build_core_wheel.py"), "--out", str(tmp)],
                           check=True, capture_output=True, text=True).stdout.strip()
    script = tmp / "run.mjs"
    script.write_text(SCRIPT % ((WASM / "src" / "index.mjs").as_posix(), json.dumps(CONSTRAINED), json.dumps(CHAT_TURNS)))
    r = subprocess.run(["node", str(script), str(model_dir), wheel, json.dumps(PROMPTS), json.dumps(SEEDED)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_node_wasm_answers_paris(node_run: dict) -> None:  # type: ignore[type-arg]
    assert "Paris" in node_run["out"][0]["text"]
    assert node_run["out"][0]["finishReason"] in ("stop", "length")
    assert node_run["info"]["engine"] == "wasm"


def test_node_wasm_greedy_tokens_equal_native(node_run: dict, model_dir: Path) -> None:  # type: ignore[type-arg]
    dtype = node_run["info"]["dtype"]
    assert dtype == load_manifest(model_dir).variant_for("wasm").dtype
    native = LLM(model_dir, dtype=dtype, max_slots=2, max_length=256)
    for p, got in zip(PROMPTS, node_run["out"]):
        c = native.generate(p, max_tokens=24)[0]
        assert got["promptTokenIds"] == c.prompt_token_ids
        assert got["tokenIds"] == c.token_ids, p
        assert got["text"] == c.text


def test_node_wasm_stream_deltas_add_up(node_run: dict) -> None:  # type: ignore[type-arg]
    deltas, streamed = node_run["deltas"], node_run["streamed"]
    assert "".join(d["text"] for d in deltas) == streamed["text"] == node_run["out"][0]["text"]
    assert [t for d in deltas for t in d["tokenIds"]] == streamed["tokenIds"]
    assert deltas[-1]["finishReason"] == streamed["finishReason"]


def test_node_wasm_seeded_sampling_equals_native(node_run: dict, model_dir: Path) -> None:  # type: ignore[type-arg]
    # The token-selection kernel exists twice (numpy, JavaScript) with the same arithmetic: the
    # same seed gives the same tokens on both engines.
    native = LLM(model_dir, dtype=node_run["info"]["dtype"], max_slots=2, max_length=256)
    for opts, got in zip(SEEDED, node_run["seeded"]):
        c = native.generate(PROMPTS[1], **{NATIVE.get(k, k): v for k, v in opts.items()})[0]
        assert got["tokenIds"] == c.token_ids, opts


def test_node_wasm_constrained_outputs_equal_native(node_run: dict, model_dir: Path) -> None:  # type: ignore[type-arg]
    """The same structured-output option on WASM in Node and natively: the same masks, so the
    same tokens for the same seed; a schema the core cannot serve is a typed error."""
    native = LLM(model_dir, dtype=node_run["info"]["dtype"], max_slots=2, max_length=256)
    for opts, got in zip(CONSTRAINED, node_run["constrained"]):
        c = native.generate(PROMPTS[0], **{NATIVE.get(k, k): v for k, v in opts.items()})[0]
        assert got["tokenIds"] == c.token_ids, opts
        assert got["finishReason"] == c.finish_reason == "stop"
        if "logprobs" in opts:
            assert got["logprobs"] == pytest.approx(c.logprobs, abs=1e-3)
            assert [[t for t, _ in row] for row in got["topLogprobs"]] == [[t for t, _ in row] for row in c.top_logprobs or []]
    assert json.loads(node_run["constrained"][0]["text"])["age"] >= 0
    assert node_run["refused"]["code"] == "bad_option" and "multipleOf" in node_run["refused"]["message"]


def test_node_wasm_prefix_caching_chat_equals_native(node_run: dict, model_dir: Path) -> None:  # type: ignore[type-arg]
    """Node's `prefixCaching`: each turn after the first reuses the conversation's cache, and the
    turns' tokens equal the native engine's with prefix caching over the same turns."""
    want = chat_turns(LLM(model_dir, dtype=node_run["info"]["dtype"], max_slots=2, max_length=1024, prefix_caching=True))
    assert node_run["chat"] == want
    st = node_run["chatStats"]
    assert st["hits"] == len(CHAT_TURNS) - 1 and st["cached_tokens"] > st["prompt_tokens"] / 2, st
