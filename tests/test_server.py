"""The server, as clients see it: a real `realm-web serve` process on a loopback port, the real
default model, the official openai SDK, raw HTTP and WebSocket clients."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from server_proc import ServerProcess

pytestmark = pytest.mark.model
Q = "What is the capital of France?"
ALPHA = "sk-alpha-000001"


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(model_dir, tmp_path_factory.mktemp("server"), extra=["--dtype", "int4"])
    yield s
    s.stop()


def post(server: ServerProcess, path: str, body: Any, key: str | None = ALPHA, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, **{"timeout": 60, **kw})


def chat_body(**kw: Any) -> dict[str, Any]:
    return {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": Q}], "temperature": 0,
            "max_tokens": 24, **kw}


def running(server: ServerProcess) -> int:
    return int(httpx.get(server.url + "/health", timeout=10).json()["running"])


def wait_idle(server: ServerProcess, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while running(server) and time.time() < deadline:
        time.sleep(0.05)
    assert running(server) == 0, "a request kept its slot"


def test_openai_sdk(server: ServerProcess) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=ALPHA)
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct"]
    r = client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": Q}],
                                       temperature=0, max_tokens=24)
    text = r.choices[0].message.content
    assert text is not None and "Paris" in text
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens == 37 and r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": Q}], temperature=0, max_tokens=24,
        stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    c = client.completions.create(model="smollm2-135m-instruct", prompt="The capital of France is", max_tokens=4,
                                  temperature=0)
    assert "Paris" in c.choices[0].text
    # seeded sampling replays; n > 1 gives n choices
    s1 = client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hi"}],
                                        temperature=0.9, seed=7, max_tokens=12, n=2)
    s2 = client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hi"}],
                                        temperature=0.9, seed=7, max_tokens=12, n=2)
    assert [x.message.content for x in s1.choices] == [x.message.content for x in s2.choices]
    assert len(s1.choices) == 2


def test_chat_without_max_tokens_runs_to_the_end(server: ServerProcess) -> None:
    body = {"model": "smollm2-135m-instruct", "temperature": 0,
            "messages": [{"role": "user", "content": "Write a short story about a cat."}]}
    r = post(server, "/v1/chat/completions", body).json()
    assert r["usage"]["completion_tokens"] > 16  # OpenAI's default: up to the context, not 16
    assert r["choices"][0]["finish_reason"] in ("stop", "length")


def test_stop_strings_and_logprobs(server: ServerProcess) -> None:
    r = post(server, "/v1/chat/completions", chat_body(stop=[" Paris"], logprobs=True)).json()
    ch = r["choices"][0]
    assert ch["finish_reason"] == "stop" and "Paris" not in ch["message"]["content"]
    lps = ch["logprobs"]["content"]
    assert lps and all(x["logprob"] <= 0 for x in lps)
    r = post(server, "/v1/completions", {"model": "smollm2-135m-instruct", "prompt": "The capital of France is",
                                         "max_tokens": 3, "temperature": 0, "echo": True}).json()
    assert r["choices"][0]["text"].startswith("The capital of France is")


BAD: list[tuple[str, Any, int, str]] = [
    ("/v1/chat/completions", b"{not json", 400, "invalid_json"),
    ("/v1/chat/completions", [1, 2], 400, "invalid_json"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": Q}]}, 400, "missing_required_parameter"),
    ("/v1/chat/completions", chat_body(messages=[]), 400, "invalid_value"),
    ("/v1/chat/completions", chat_body(messages="hello"), 400, "invalid_value"),
    ("/v1/chat/completions", chat_body(messages=[{"role": "robot", "content": "x"}]), 400, "invalid_value"),
    ("/v1/chat/completions", chat_body(messages=[{"role": "user", "content": 5}]), 400, "invalid_type"),
    ("/v1/chat/completions", chat_body(temperature="hot"), 400, "invalid_type"),
    ("/v1/chat/completions", chat_body(temperature=5), 400, "invalid_value"),
    ("/v1/chat/completions", chat_body(top_p=0), 400, "invalid_value"),
    ("/v1/chat/completions", chat_body(max_tokens=-3), 400, "invalid_value"),
    ("/v1/chat/completions", chat_body(max_tokens=True), 400, "invalid_type"),
    ("/v1/chat/completions", chat_body(n=100), 400, "invalid_value"),
    ("/v1/chat/completions", chat_body(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value"),
    ("/v1/chat/completions", chat_body(frobnicate=1), 400, "unknown_parameter"),
    ("/v1/chat/completions", chat_body(tools=[{"type": "function"}]), 400, "invalid_value"),
    ("/v1/chat/completions", chat_body(model="gpt-17"), 404, "model_not_found"),
    ("/v1/chat/completions", chat_body(messages=[{"role": "user", "content": "word " * 600}]), 400,
     "context_length_exceeded"),
    ("/v1/chat/completions", chat_body(max_tokens=500), 400, "max_tokens_exceeded"),
    ("/v1/chat/completions", chat_body(max_tokens=390, messages=[{"role": "user", "content": "word " * 150}]), 400,
     "context_length_exceeded"),
    ("/v1/chat/completions", chat_body(stream_options={"include_usage": True}), 400, "invalid_value"),
    ("/v1/chat/completions", {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x" * 70000}]},
     413, "body_too_large"),
    ("/v1/completions", {"model": "smollm2-135m-instruct", "prompt": ""}, 400, "invalid_value"),
    ("/v1/completions", {"model": "smollm2-135m-instruct", "prompt": [99999999]}, 400, "invalid_value"),
    ("/v1/completions", {"model": "smollm2-135m-instruct", "prompt": {"a": 1}}, 400, "invalid_type"),
    ("/v1/completions", {"model": "smollm2-135m-instruct", "prompt": "hi", "best_of": 3}, 400, "unsupported_parameter"),
    ("/v1/nothing-here", {}, 404, "not_found"),
]


@pytest.mark.parametrize("path,body,status,code", BAD, ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_input_gets_a_4xx_json_error(server: ServerProcess, path: str, body: Any, status: int, code: str) -> None:
    if isinstance(body, bytes):
        r = httpx.post(server.url + path, content=body, headers={"Authorization": f"Bearer {ALPHA}",
                                                                 "Content-Type": "application/json"}, timeout=30)
    else:
        r = post(server, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]


def test_bad_inputs_do_not_disturb_a_running_request(server: ServerProcess) -> None:
    async def go() -> tuple[str, list[int]]:
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {ALPHA}"},
                                     timeout=60) as c:
            good = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat_body(max_tokens=64)))
            statuses = []
            for path, body, _, _ in BAD:
                if isinstance(body, bytes):
                    r = await c.post(path, content=body)
                else:
                    r = await c.post(path, json=body)
                statuses.append(r.status_code)
            r = await good
            return r.json()["choices"][0]["message"]["content"], statuses

    text, statuses = asyncio.run(go())
    assert "Paris" in text
    assert all(400 <= s < 500 for s in statuses)
    assert httpx.get(server.url + "/v1/chat/completions", timeout=10).status_code == 405
    assert "Paris" in post(server, "/v1/chat/completions", chat_body()).json()["choices"][0]["message"]["content"]


def test_tenants(server: ServerProcess) -> None:
    r = post(server, "/v1/chat/completions", chat_body(), key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert post(server, "/v1/chat/completions", chat_body(), key="sk-wrong-key-123").status_code == 401
    assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 401
    # a key that may not use this model neither lists nor uses it
    gamma = {"Authorization": "Bearer sk-gamma-000001"}
    assert httpx.get(server.url + "/v1/models", headers=gamma, timeout=10).json()["data"] == []
    assert post(server, "/v1/chat/completions", chat_body(), key="sk-gamma-000001").status_code == 404
    # requests per minute
    codes = [post(server, "/v1/chat/completions", chat_body(max_tokens=2), key="sk-beta-0000001") for _ in range(4)]
    assert [c.status_code for c in codes] == [200, 200, 200, 429]
    assert int(codes[-1].headers["retry-after"]) >= 1 and codes[-1].json()["error"]["type"] == "rate_limit_error"
    assert post(server, "/v1/chat/completions", chat_body(max_tokens=2)).status_code == 200  # others unaffected
    # tokens per minute: 37 prompt + 50 > 120 after the first
    d = [post(server, "/v1/chat/completions", chat_body(max_tokens=50, ignore_eos=True), key="sk-delta-000001")
         for _ in range(2)]
    assert [x.status_code for x in d] == [200, 429]
    # concurrency: one stream in flight, the second request waits for nothing: 429
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=chat_body(max_tokens=300, ignore_eos=True,
                      stream=True), headers={"Authorization": "Bearer sk-solo-0000001"}, timeout=60) as s:
        lines = s.iter_lines()  # keep the iterator: dropping it closes the response
        next(lines)
        r = post(server, "/v1/chat/completions", chat_body(max_tokens=2), key="sk-solo-0000001")
        assert r.status_code == 429
    wait_idle(server)
    assert post(server, "/v1/chat/completions", chat_body(max_tokens=2), key="sk-solo-0000001").status_code == 200


def test_client_disconnect_frees_the_slot(server: ServerProcess) -> None:
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=chat_body(max_tokens=380, ignore_eos=True,
                      stream=True), headers={"Authorization": f"Bearer {ALPHA}"}, timeout=60) as s:
        lines = s.iter_lines()
        for _ in range(6):
            next(lines)
        assert running(server) == 1
    wait_idle(server)
    with pytest.raises(httpx.ReadTimeout):  # non-streaming: the client gives up
        post(server, "/v1/chat/completions", chat_body(max_tokens=380, ignore_eos=True), timeout=0.5)
    wait_idle(server)


def test_websocket_protocol(server: ServerProcess) -> None:
    from websockets.sync.client import connect

    with connect(server.url.replace("http", "ws") + "/ws", additional_headers={"Authorization": f"Bearer {ALPHA}"}) as ws:
        ws.send(json.dumps({"id": "a", "function": "generate",
                            "params": {"messages": [{"role": "user", "content": Q}], "temperature": 0, "max_tokens": 24}}))
        ws.send(json.dumps({"id": "b", "function": "generate",
                            "params": {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 300,
                                       "ignore_eos": True}}))
        ws.send(json.dumps({"id": "a", "function": "generate", "params": {"prompt": "x"}}))  # duplicate id
        ws.send("{nope")
        ws.send(b"\x00binary")
        ws.send(json.dumps({"id": 9, "function": "teleport"}))
        ws.send(json.dumps({"function": "health"}))
        ws.send(json.dumps({"id": "h", "function": "health"}))
        ws.send(json.dumps({"id": "m", "function": "metadata"}))
        frames: dict[Any, list[dict[str, Any]]] = {}
        b_tokens = 0
        while not ({"a", "b"} <= {k for k, v in frames.items() if v[-1]["status"] != "streaming"}):
            f = json.loads(ws.recv(timeout=60))
            frames.setdefault(f["id"], []).append(f)
            if f["id"] == "b" and f["status"] == "streaming":
                b_tokens += 1
                if b_tokens == 3:
                    ws.send(json.dumps({"id": "c", "function": "cancel", "params": {"id": "b"}}))
        a = frames["a"]
        assert a[-1]["status"] == "complete" and "Paris" in a[-1]["data"]["text"]
        toks = [f["data"] for f in a if f["status"] == "streaming"]
        assert [t["index"] for t in toks] == list(range(len(toks))) == list(range(a[-1]["data"]["tokens_generated"]))
        assert "".join(t["text"] for t in toks) == a[-1]["data"]["text"] and toks[-1]["is_final"]
        assert a[-1]["data"]["prompt_tokens"] == 37 and a[-1]["data"]["time_ms"] > 0
        assert frames["b"][-1]["status"] == "cancelled" and frames["b"][-1]["data"]["tokens_generated"] < 300
        errors = [f for fs in frames.values() for f in fs if f["status"] == "error"]
        codes = sorted(f["error"]["code"] for f in errors)
        assert codes == ["binary_frame", "duplicate_id", "invalid_json", "missing_id", "unknown_function"], codes
        while "m" not in frames or "h" not in frames or "c" not in frames:
            f = json.loads(ws.recv(timeout=30))
            frames.setdefault(f["id"], []).append(f)
        assert frames["h"][0]["data"]["status"] == "ok"
        meta = frames["m"][0]["data"]
        assert meta["model"]["id"] == "smollm2-135m-instruct" and set(meta["functions"]) >= {"generate", "cancel"}
        assert frames["c"][0]["status"] == "complete"
        ws.send(json.dumps({"id": "z", "function": "generate", "params": {"messages": [{"role": "user", "content": Q}],
                            "temperature": 0, "max_tokens": 900}}))
        assert json.loads(ws.recv(timeout=30))["error"]["code"] == "max_tokens_exceeded"
    wait_idle(server)
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as e:  # no key: the upgrade is refused with 401
        connect(server.url.replace("http", "ws") + "/ws")
    assert e.value.response.status_code == 401 and b"invalid_api_key" in e.value.response.body
    # leaving with a generation in flight cancels it
    with connect(server.url.replace("http", "ws") + "/ws?api_key=" + ALPHA) as ws:
        ws.send(json.dumps({"id": 1, "function": "generate", "params": {"prompt": "Count:", "max_tokens": 380,
                                                                          "ignore_eos": True}}))
        json.loads(ws.recv(timeout=30))
    wait_idle(server)


def test_metrics_and_health(server: ServerProcess) -> None:
    post(server, "/v1/chat/completions", chat_body(max_tokens=4))
    assert post(server, "/v1/chat/completions", chat_body(max_tokens=4), key=None).status_code == 401
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'realm_requests_total{endpoint="/v1/chat/completions",status="401"}' in text
    for name in ("realm_requests_total", "realm_prompt_tokens_total", "realm_generation_tokens_total",
                 "realm_time_to_first_token_seconds_count", "realm_time_per_output_token_seconds_count",
                 "realm_requests_running", "realm_requests_waiting", "realm_kv_cache_usage_ratio"):
        assert name in text, name
    assert 'realm_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    h = httpx.get(server.url + "/health", timeout=10).json()
    assert h["status"] == "ok" and h["model"] == "smollm2-135m-instruct"
    assert "request" in server.logs() and '"tenant": "alpha"' in server.logs()


def test_python_sdk(server: ServerProcess) -> None:
    from realm_web.client import AsyncClient, AuthenticationError, BadRequestError, Client

    with Client(server.url, api_key=ALPHA) as c:
        assert c.models() == ["smollm2-135m-instruct"]
        r = c.chat(Q, temperature=0, max_tokens=24)
        assert "Paris" in r.text and r.finish_reason == "stop"
        assert "".join(d.text for d in c.chat(Q, temperature=0, max_tokens=24, stream=True)) == r.text
        assert "Paris" in c.complete("The capital of France is", temperature=0, max_tokens=4).text
        with c.websocket() as ws:
            assert ws.generate(Q, temperature=0, max_tokens=24).text == r.text
            assert ws.call("health")["status"] == "ok"
        with pytest.raises(BadRequestError):
            c.chat(Q, temperature=9)
    with pytest.raises(AuthenticationError):
        Client(server.url, api_key="sk-not-a-key-1").models()

    async def go() -> list[str]:
        async with AsyncClient(server.url, api_key=ALPHA) as ac:
            ws = await ac.websocket()
            try:
                texts = await asyncio.gather(ac.chat(Q, temperature=0, max_tokens=24),
                                             ws.generate(Q, temperature=0, max_tokens=24),
                                             ws.generate("Name a color.", temperature=0, max_tokens=8))
            finally:
                await ws.close()
            streamed = "".join([d.text async for d in ac.stream_chat(Q, temperature=0, max_tokens=24)])
            return [t.text for t in texts] + [streamed]

    a, b, _, s = asyncio.run(go())
    assert a == b == s == r.text


def test_graceful_shutdown_ends_streams_cleanly(model_dir: Path, tmp_path: Path) -> None:
    import signal

    s = ServerProcess(model_dir, tmp_path, config="[server]\nshutdown_grace_s = 0.5\n", extra=["--dtype", "int4"])
    try:
        with httpx.stream("POST", s.url + "/v1/completions", json={
                "model": "smollm2-135m-instruct", "prompt": "Count to a thousand:", "max_tokens": 480,
                "ignore_eos": True, "stream": True}, timeout=60) as r:
            lines = r.iter_lines()
            first = next(lines)
            assert first.startswith("data:")
            s.proc.send_signal(signal.SIGTERM)
            rest = [x for x in lines if x]
        events = [json.loads(x[5:]) for x in [first, *rest] if x.startswith("data: {")]
        assert rest[-1] == "data: [DONE]"
        assert events[-1]["choices"][0]["finish_reason"] == "abort"
        assert s.proc.wait(30) == 0
    finally:
        s.stop()


def test_serve_refuses_open_mode_off_loopback_and_bad_config(model_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "realm_web.cli", "serve", "--host", "0.0.0.0", "--model", str(model_dir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "API keys" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[[tenants]]\nname = 'x'\napi_keys = ['short']\n")
    r = subprocess.run([sys.executable, "-m", "realm_web.cli", "serve", "--config", str(bad), "--model", str(model_dir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "api_keys" in r.stderr


def test_tokenizer_endpoints(server: ServerProcess) -> None:
    """vLLM's /tokenize, /detokenize, /tokenizer_info: counts equal the completion paths' usage."""
    text = "Grüße aus Köln: 日本語 and emoji 🙂, then <|im_end|>."
    r = post(server, "/tokenize", {"prompt": text, "return_token_strs": True})
    assert r.status_code == 200, r.text
    tok = r.json()
    assert tok["count"] == len(tok["tokens"]) == len(tok["token_strs"]) and tok["max_model_len"] > 0
    comp = post(server, "/v1/completions", {"model": "smollm2-135m-instruct", "prompt": text, "max_tokens": 1}).json()
    assert comp["usage"]["prompt_tokens"] == tok["count"]
    assert post(server, "/detokenize", {"tokens": tok["tokens"]}).json() == {"prompt": text}
    msgs = chat_body()["messages"]
    chat = post(server, "/tokenize", {"messages": msgs, "model": "smollm2-135m-instruct"}).json()
    assert chat["count"] == post(server, "/v1/chat/completions", chat_body(max_tokens=1)).json()["usage"]["prompt_tokens"]
    bare = post(server, "/tokenize", {"messages": msgs, "add_generation_prompt": False}).json()
    assert bare["count"] < chat["count"] and chat["tokens"][:bare["count"]] == bare["tokens"]
    info = httpx.get(server.url + "/tokenizer_info", headers={"Authorization": f"Bearer {ALPHA}"}, timeout=10).json()
    assert info["vocab_size"] == 49152 and info["chat_template"] and info["eos_token_ids"]
    for path, body, status, code in [
        ("/tokenize", {"prompt": "a", "messages": msgs}, 400, "invalid_value"),
        ("/tokenize", {"prompt": ""}, 400, "invalid_type"),
        ("/tokenize", {"prompt": "a", "truncate": 3}, 400, "unknown_parameter"),
        ("/tokenize", {"prompt": "a", "add_special_tokens": "yes"}, 400, "invalid_type"),
        ("/tokenize", {"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value"),
        ("/tokenize", {"prompt": "a", "model": "gpt-17"}, 404, "model_not_found"),
        ("/detokenize", {"tokens": [1, 49152]}, 400, "invalid_value"),
        ("/detokenize", {"tokens": "1 2"}, 400, "invalid_value"),
        ("/detokenize", [1, 2], 400, "invalid_json"),
    ]:
        r = post(server, path, body)
        assert r.status_code == status and r.json()["error"]["code"] == code, (path, body, r.text)
    assert post(server, "/tokenize", {"prompt": "a"}, key=None).status_code == 401
