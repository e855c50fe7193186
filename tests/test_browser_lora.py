"""LoRA in the browser tab (headless Chromium): the page served by `realm-web serve
--lora-modules` lists the server's adapter, the tab downloads it and runs it on WASM and WebGPU
(SwiftShader: the realm kernels' own LoRA tables) next to the base model; the same greedy ids as
the native CPU engine."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters import write_random_adapter
from realm_web import LLM, load_manifest
from server_proc import ROOT, ServerProcess
from test_browser import ARGS, CHROMIUM, QUESTION

pytestmark = pytest.mark.model
OTHER = "Name three colors."


def reference(model_dir: Path, adapter: Path, dtype: str, max_tokens: int,
              others: dict[str, Path] | None = None) -> dict[str, list[list[int]]]:
    """The native engine's greedy ids of QUESTION and OTHER, each alone, base and adapter a1 (and
    `others`, by name)."""
    llm = LLM(model_dir, dtype=dtype, max_slots=1, max_length=512)
    adapters = {"a1": adapter, **(others or {})}
    for name, path in adapters.items():
        llm.load_adapter(name, path)
    out = {str(a): [llm.generate(q, max_tokens=max_tokens, adapter=a)[0].token_ids for q in (QUESTION, OTHER)]
           for a in (None, *adapters)}
    llm.close()
    return out


def test_adapter_in_the_tab(model_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    manifest = load_manifest(model_dir)
    adapter = write_random_adapter(tmp_path / "a1", manifest.architecture, r=16, alpha=32, seed=1, b_scale=0.08)
    # a second one as PEFT's defaults make them: q and v only, a lower rank than the tables hold
    a2 = write_random_adapter(tmp_path / "a2", manifest.architecture, r=4, alpha=8, seed=2, b_scale=0.3,
                              targets=("q_proj", "v_proj"))
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_web.py")], check=True, capture_output=True)
    s = ServerProcess(model_dir, tmp_path, config=None,
                      extra=["--dtype", "int4", "--web", str(ROOT / "build" / "web"), "--lora-modules", f"a1={adapter}", f"a2={a2}"])
    got: dict[str, Any] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page()
            page.goto(f"{s.url}/?backend=wasm&threads=2")
            got["info"] = page.evaluate("() => window.realm.ready")
            page.wait_for_function("[...document.querySelector('#adapter').options].some((o) => o.value === 'a1')")
            got["listed"] = page.evaluate("() => window.realm.serverAdapters()")
            got["loaded"] = page.evaluate("() => window.realm.loadAdapter('a1', './adapters/a1/')")
            got["mixed"] = page.evaluate(
                f"() => Promise.all([[{json.dumps(QUESTION)}, null], [{json.dumps(QUESTION)}, 'a1'], [{json.dumps(OTHER)}, 'a1'],"
                f" [{json.dumps(OTHER)}, null]].map(([q, a]) => window.realm.generate(q, {{maxTokens: 16, adapter: a}})))")
            got["errors"] = page.evaluate(
                "async () => { const out = [];"
                " for (const f of [() => window.realm.loadAdapter('x', './adapters/nope/'),"
                "                  () => window.realm.generate('Hi', {adapter: 'zzz', maxTokens: 2})])"
                "   try { await f(); out.push(null); } catch (e) { out.push([e.code, e.field, e.message]); }"
                " return out; }")
            # the page's own controls: the adapter chosen in the list answers the chat
            page.select_option("#adapter", "a1")
            page.fill("#maxTokens", "16")
            page.fill("#input", QUESTION)
            page.click("#send")
            page.wait_for_function("document.querySelector('#stop').disabled && document.querySelectorAll('.msg.assistant').length")
            got["ui"] = page.inner_text(".msg.assistant")
            got["server"] = page.evaluate(
                f"() => window.realm.generate({json.dumps(QUESTION)}, {{backend: 'server', adapter: 'a1', maxTokens: 16}})")
            # WebGPU on the realm kernels: the adapters in their own LoRA tables, rows on each and one
            # without in the same steps
            gpu = browser.new_page()
            gpu.goto(f"{s.url}/?backend=webgpu")
            got["gpu_kernels"] = gpu.evaluate("async () => (await window.realm.ready).kernels")
            gpu.evaluate("() => window.realm.loadAdapter('a1', './adapters/a1/')")
            gpu.evaluate("() => window.realm.loadAdapter('a2', './adapters/a2/')")
            got["gpu_info"] = gpu.evaluate("() => window.realm.info")
            got["gpu"] = gpu.evaluate(
                f"() => Promise.all([[{json.dumps(QUESTION)}, 'a1'], [{json.dumps(OTHER)}, null], [{json.dumps(QUESTION)}, 'a2']]"
                ".map(([q, a]) => window.realm.generate(q, {maxTokens: 6, adapter: a})))")
            # logits read back on an adapter row (logprobs of the prompt and of sampled tokens)
            got["gpu_lp"] = gpu.evaluate(f"() => window.realm.generate({json.dumps(OTHER)}, "
                                         "{maxTokens: 3, adapter: 'a2', logprobs: true, promptLogprobs: 0, temperature: 0.8, seed: 5})")
            browser.close()
    finally:
        s.stop()

    assert [a["id"] for a in got["listed"]] == ["a1", "a2"] and got["listed"][0]["parent"] == manifest.name
    assert got["loaded"]["name"] == "a1" and got["loaded"]["rank"] == 16
    wasm = reference(model_dir, adapter, got["info"]["dtype"], 16)
    assert wasm["None"] != wasm["a1"]  # the adapter changes the answers
    mixed = [r["tokenIds"] for r in got["mixed"]]
    assert mixed == [wasm["None"][0], wasm["a1"][0], wasm["a1"][1], wasm["None"][1]]
    assert got["errors"][0][:2] == ["bad_adapter", "path"] and "HTTP 404" in got["errors"][0][2]
    assert got["errors"][1][0] == "adapter_not_found" and "zzz" in got["errors"][1][2]
    assert got["ui"].strip() == got["mixed"][1]["text"].strip()
    assert got["server"]["tokenIds"] == reference(model_dir, adapter, "int4", 16)["a1"][0]
    assert got["gpu_kernels"] == "realm" and got["gpu_info"]["kernels"] == "realm"
    assert got["gpu_info"]["backend"] == "webgpu" and got["gpu_info"]["dtype"] == "fp32"
    gpu_ref = reference(model_dir, adapter, "fp32", 6, {"a2": a2})
    assert gpu_ref["a2"][0] not in (gpu_ref["a1"][0], gpu_ref["None"][0])
    assert [r["tokenIds"] for r in got["gpu"]] == [gpu_ref["a1"][0], gpu_ref["None"][1], gpu_ref["a2"][0]]
    llm = LLM(model_dir, dtype="fp32", max_slots=1, max_length=512)
    llm.load_adapter("a2", a2)
    want = llm.generate(OTHER, max_tokens=3, adapter="a2", logprobs=True, prompt_logprobs=0, temperature=0.8, seed=5)[0]
    llm.close()
    lp = got["gpu_lp"]
    assert lp["tokenIds"] == want.token_ids
    assert max(abs(a - b) for a, b in zip(lp["logprobs"], want.logprobs or [])) < 1e-3
    plp = [(a, b) for a, b in zip(lp["promptLogprobs"], want.prompt_logprobs or []) if b is not None]
    assert len(plp) == len(want.prompt_token_ids) - 1 and max(abs(a - b) for a, b in plp) < 1e-3
