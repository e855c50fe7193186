"""The page served by `realm-web serve` itself: its "server" backend (the chat runs on the
server, over the /ws protocol), and the in-tab WASM backend from the same origin."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from realm_web import LLM
from server_proc import ROOT, ServerProcess
from test_browser import ARGS, CHROMIUM, QUESTION

pytestmark = pytest.mark.model


def test_page_on_realm_web_serve(model_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    subprocess.run([sys.executable, str(ROOT / "tools" / "build_web.py")], check=True, capture_output=True)
    s = ServerProcess(model_dir, tmp_path, config=None, extra=["--dtype", "int4", "--web", str(ROOT / "build" / "web")])
    outside: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page()
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(s.url) else None)
            page.goto(f"{s.url}/?backend=server")
            info = page.evaluate("() => window.realm.ready")
            answer = page.evaluate(f"() => window.realm.generate({json.dumps(QUESTION)}, {{maxTokens: 24}})")
            streamed = page.evaluate(
                f"async () => {{ const ds = []; const r = await window.realm.stream({json.dumps(QUESTION)},"
                " {maxTokens: 24}, (d) => ds.push(d)); return {r, ds}; }")
            page.wait_for_function("document.querySelector('#statusText').textContent.includes('server')")
            status = page.inner_text("#statusText")
            wasm = page.evaluate(f"() => window.realm.generate({json.dumps(QUESTION)}, {{backend: 'wasm', maxTokens: 24}})")
            isolated = page.evaluate("() => crossOriginIsolated")
            browser.close()
    finally:
        s.stop()
    assert info["backend"] == "server" and info["name"] == "smollm2-135m-instruct"
    assert "Paris" in answer["text"] and answer["finishReason"] == "stop"
    ref = LLM(model_dir, dtype="int4", max_slots=1, max_length=256).generate(QUESTION, max_tokens=24)[0]
    assert answer["tokenIds"] == ref.token_ids and answer["promptTokenIds"] == ref.prompt_token_ids
    ds = streamed["ds"]
    assert "".join(d["text"] for d in ds) == answer["text"] == streamed["r"]["text"]
    assert [t for d in ds for t in d["tokenIds"]] == ref.token_ids
    assert "realm-web server" in status
    assert isolated and "Paris" in wasm["text"]
    assert not outside, outside
