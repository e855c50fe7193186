"""Property-based fuzzing of the real server (hypothesis): OpenAI-shaped HTTP bodies with every
field right, wrong or missing, arbitrary JSON and raw bytes; WebSocket frames likewise, sent on a
socket while a well-formed stream runs on it. Properties: no 5xx and no internal_error, every
answer is JSON in the API's shape, the concurrent stream completes unchanged, and the server is
healthy after. REALM_WEB_FUZZ_EXAMPLES sets the number of examples (default 150 / 40)."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server_proc import ServerProcess

pytestmark = pytest.mark.model
MODEL = "smollm2-135m-instruct"
KEY = "sk-fuzz-0000001"
CONFIG = f"""
[server]
max_body_bytes = 65536

[[tenants]]
name = "fuzz"
api_keys = ["{KEY}"]
max_tokens = 6
"""
N_HTTP = int(os.environ.get("REALM_WEB_FUZZ_EXAMPLES", "150"))
N_WS = max(10, N_HTTP // 4)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(model_dir, tmp_path_factory.mktemp("fuzz"), config=CONFIG, extra=["--dtype", "int4"])
    yield s
    s.stop()


# -- strategies ------------------------------------------------------------------------------------
NASTY = ["\ud800", "\udfff", "a\x00b", "\x00", "\x07\x1b[31m", "", " ", "\u202e\u2066", "💥" * 3, "\ufeff",
         "<|im_start|>system\nx<|im_end|>", "\\u0000", "%s%n", "x" * 3000]
text = st.one_of(st.text(max_size=40), st.sampled_from(NASTY))
scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                   text)
anything = st.recursive(scalar, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(text, c, max_size=4)),
                        max_leaves=12)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: mostly of the right shape, sometimes anything at all."""
    return st.one_of(valid, valid, anything)


words = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=24)
# (valid value, the field) for each field of the API: valid ones make the server generate
COMMON: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": st.integers(1, 6),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.05, 1),
    "top_k": st.integers(0, 50),
    "min_p": st.floats(0, 0.5),
    "n": st.integers(1, 3),
    "stream": st.booleans(),
    "stop": st.one_of(words, st.lists(words, max_size=4)),
    "seed": st.integers(-2**63, 2**63),
    "presence_penalty": st.just(0),
    "frequency_penalty": st.just(0.0),
    "logit_bias": st.just({}),
    "user": words,
    "repetition_penalty": st.floats(0.5, 2),
    "ignore_eos": st.booleans(),
    "stop_token_ids": st.lists(st.integers(0, 49151), max_size=3),
}
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "developer"]),
                                 "content": st.one_of(words, st.lists(st.fixed_dictionaries(
                                     {"type": st.just("text"), "text": words}), min_size=1, max_size=2))})
CHAT = {**COMMON, "max_completion_tokens": st.integers(1, 6), "logprobs": st.just(True), "top_logprobs": st.integers(0, 20),
        "response_format": st.just({"type": "text"}), "tool_choice": st.sampled_from(["none", "auto"]),
        "metadata": st.dictionaries(words, words, max_size=2), "store": st.booleans(),
        "service_tier": words, "parallel_tool_calls": st.booleans()}
COMPLETION = {**COMMON, "logprobs": st.integers(0, 20), "echo": st.booleans(), "best_of": st.just(1)}
REQUIRED = {"/v1/chat/completions": {"model": st.just(MODEL), "messages": st.lists(message, min_size=1, max_size=3)},
            "/v1/completions": {"model": st.just(MODEL), "prompt": st.one_of(
                words, st.lists(st.integers(0, 49151), min_size=1, max_size=8), st.lists(words, min_size=1, max_size=2))}}
WRONG = st.one_of(anything, st.sampled_from(NASTY), st.integers(-10, -1), st.floats(3, 1e308), st.just([]), st.just({}))


@st.composite
def body(draw: Any, path: str, fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A valid body (the required fields and some optional ones), then maybe broken: a field of
    the wrong shape, a required one missing, an unknown one added."""
    out: dict[str, Any] = {k: draw(v) for k, v in REQUIRED[path].items()}
    for k in draw(st.lists(st.sampled_from(sorted(fields)), max_size=6, unique=True)):
        out[k] = draw(fields[k])
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        k = draw(st.sampled_from(sorted({*fields, *REQUIRED[path], "adapter", "tools", "unknown_field"})))
        if draw(st.booleans()) and k in out:
            del out[k]
        else:
            out[k] = draw(WRONG)
    return out


def payload(path: str, fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes]:
    valid = body(path, fields).map(lambda b: json.dumps(b).encode())
    return st.one_of(valid, valid, valid, valid,
                     anything.map(lambda b: json.dumps(b).encode()), st.binary(max_size=64))


def check_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:400])
    if r.status_code != 200:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and "type" in err and "code" in err, err
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        lines = [x for x in r.text.split("\n") if x.startswith("data: ")]
        assert lines and lines[-1] == "data: [DONE]", r.text[-300:]
        for x in lines[:-1]:
            ev = json.loads(x[6:])
            assert "error" not in ev, ev
            assert isinstance(ev["choices"], list)
    else:
        out = r.json()
        assert out["object"] in ("chat.completion", "text_completion") and out["choices"], out
        assert out["usage"]["completion_tokens"] <= 6 * len(out["choices"])


@pytest.mark.parametrize("path,fields", [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)],
                         ids=["chat", "completions"])
def test_http_fuzz_never_5xx(server: ServerProcess, path: str, fields: dict[str, st.SearchStrategy[Any]]) -> None:
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {KEY}",
                                                                "Content-Type": "application/json"}) as c:
        @settings(max_examples=N_HTTP, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(data=payload(path, fields))
        def one(data: bytes) -> None:
            r = c.post(path, content=data)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            check_answer(r)

        one()
        # both sides of the edge were exercised: requests the model answered, and refusals
        assert statuses.get(200, 0) >= N_HTTP // 10 and statuses.get(400, 0) >= N_HTTP // 10, statuses
        assert c.get("/health").json()["status"] == "ok"
        metrics = c.get("/metrics").text
        assert 'status="500"' not in metrics and 'reason="internal_error"' not in metrics


frame = st.one_of(
    st.fixed_dictionaries({"id": maybe(st.one_of(st.integers(), text)),
                           "function": st.sampled_from(["generate", "cancel", "health", "metadata", "nope"])},
                          optional={"params": st.one_of(body("/v1/chat/completions", CHAT),
                                                        body("/v1/completions", COMPLETION), anything),
                                    "tenant_id": maybe(text), "extra": anything}).map(json.dumps),
    anything.map(json.dumps),
    st.text(max_size=30),
).filter(lambda f: "main" not in f and "last-health" not in f)  # leave the watched stream alone


def test_websocket_fuzz_leaves_the_socket_and_its_stream_alone(server: ServerProcess) -> None:
    want = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60, json={
        "model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}).json()
    want_text = want["choices"][0]["text"]
    url = server.url.replace("http", "ws") + f"/ws?api_key={KEY}"

    async def session(frames: list[str]) -> None:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"id": "main", "function": "generate",
                                      "params": {"prompt": "The capital of France is", "max_tokens": 6,
                                                 "temperature": 0}}))
            for f in frames:
                await ws.send(f)
            await ws.send(json.dumps({"id": "last-health", "function": "health"}))
            main, health = None, False
            while main is None or not health:
                got = json.loads(await asyncio.wait_for(ws.recv(), 60))
                assert got.get("error", {}).get("code") != "internal_error", got
                if got["status"] == "error":
                    assert isinstance(got["error"]["message"], str) and got["error"]["code"], got
                if got["id"] == "main" and got["status"] != "streaming" and got.get("data") is not None:
                    main = got
                health = health or (got["id"] == "last-health" and got["status"] == "complete")
            assert main["status"] == "complete" and main["data"]["text"] == want_text, main

    @settings(max_examples=N_WS, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(frames=st.lists(frame, max_size=12))
    def one(frames: list[str]) -> None:
        asyncio.run(session(frames))

    one()
    h = httpx.get(server.url + "/health", timeout=10).json()
    assert h["status"] == "ok"
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'reason="internal_error"' not in metrics and 'status="500"' not in metrics
