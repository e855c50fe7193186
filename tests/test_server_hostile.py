"""The server against hostile clients and shutdown, on real `realm-web serve` processes: bad
input is refused per request (never a 500, never a neighbour lost), slow clients are cut off,
queues are bounded, requests time out, and SIGTERM drains HTTP and WebSocket streams alike."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import websockets

from server_proc import CONFIG, ServerProcess

pytestmark = pytest.mark.model
MODEL = "smollm2-135m-instruct"
ALPHA = "sk-alpha-000001"
Q = "What is the capital of France?"


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(model_dir, tmp_path_factory.mktemp("hostile"), extra=["--dtype", "int4"],
                      config=CONFIG.replace("[server]\n", "[server]\nheader_timeout_s = 1\nbody_timeout_s = 1\n"))
    yield s
    s.stop()


def raw_post(server: ServerProcess, path: str, data: bytes | str, key: str = ALPHA) -> httpx.Response:
    return httpx.post(server.url + path, content=data, timeout=60,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def chat(content: Any, **kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": 8, **kw}


def expect_400(r: httpx.Response, code: str) -> dict[str, Any]:
    assert r.status_code == 400, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"], err
    return err  # type: ignore[no-any-return]


HOSTILE_BODIES = [
    ("[" * 30_000 + "]" * 30_000, "invalid_json"),
    ('{"a":' * 10_000 + "1" + "}" * 10_000, "invalid_json"),
    ('{"model": "%s", "messages": [], "temperature": NaN}' % MODEL, "invalid_json"),
    ('{"max_tokens": 1%s}' % ("0" * 5000), "invalid_json"),
    (b'{"model": "\xff\xfe"}', "invalid_json"),
    (json.dumps({"model": MODEL, "prompt": "\ud800"}), "invalid_text"),
    (json.dumps({"model": MODEL, "prompt": ["ok", "bad \udfff tail"]}), "invalid_text"),
    (json.dumps({"model": MODEL, "prompt": "a\x00b"}), "invalid_text"),
    (json.dumps({"model": "\ud800", "prompt": "hi"}), "invalid_text"),
    (json.dumps({"model": MODEL, "prompt": "hi", "stop": ["\udc80"]}), "invalid_text"),
    (json.dumps({"model": MODEL, "prompt": "hi", "\ud800": 1}), "unknown_parameter"),
]


@pytest.mark.parametrize("body,code", HOSTILE_BODIES, ids=[f"body{i}" for i in range(len(HOSTILE_BODIES))])
def test_hostile_completion_bodies_are_400s(server: ServerProcess, body: str | bytes, code: str) -> None:
    expect_400(raw_post(server, "/v1/completions", body), code)


def test_hostile_chat_bodies_are_400s(server: ServerProcess) -> None:
    for content, code in (("\ud800", "invalid_text"), ("nul\x00", "invalid_text"),
                          ([{"type": "text", "text": "\udbff"}], "invalid_text")):
        expect_400(raw_post(server, "/v1/chat/completions", json.dumps(chat(content))), code)
    for bad in ({"role": ["user"], "content": "x"}, {"role": {"a": 1}, "content": "x"}):
        body = {"model": MODEL, "messages": [bad]}
        assert raw_post(server, "/v1/chat/completions", json.dumps(body)).status_code == 400
    for field, value in (("user", 5), ("metadata", {"k": 1}), ("store", "yes"), ("tool_choice", {"type": "x"})):
        r = raw_post(server, "/v1/chat/completions", json.dumps({**chat(Q), field: value}))
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, r.text)
    # text with other control characters is the model's to read
    r = raw_post(server, "/v1/chat/completions", json.dumps(chat("tab\tbell\x07 escape\x1b[0m")))
    assert r.status_code == 200, r.text


async def _ws_session(server: ServerProcess) -> dict[str, Any]:
    """One socket: a long generate, and hostile frames sent while it streams."""
    url = server.url.replace("http", "ws") + f"/ws?api_key={ALPHA}"
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"id": "main", "function": "generate",
                                  "params": {"messages": [{"role": "user", "content": Q}], "max_tokens": 40,
                                             "temperature": 0}}))
        hostile = [
            "[" * 30_000 + "]" * 30_000,
            json.dumps({"id": "big", "function": "generate", "params": {"prompt": "x" * 70_000}}),
            json.dumps({"id": "s1", "function": "generate", "params": {"prompt": "\ud800"}}),
            json.dumps({"id": "s2", "function": "generate", "params": {"messages": [{"role": "user", "content": "a\x00"}]}}),
            json.dumps({"id": "c1", "function": "cancel", "params": {"id": ["not", "hashable"]}}),
            json.dumps({"id": "c2", "function": "cancel", "params": {"id": {"a": 1}}}),
            json.dumps({"id": "bad\ud800id", "function": "health"}),
            json.dumps({"id": "r1", "function": "generate", "params": {"messages": [{"role": [], "content": "x"}]}}),
            json.dumps({"id": "n1", "function": "generate", "params": {"prompt": "x", "temperature": 1e999}}),
            "not json at all",
        ]
        for h in hostile:
            await ws.send(h)
        await ws.send(b"\x00\x01binary")
        await ws.send(json.dumps({"id": "h", "function": "health"}))
        frames: list[dict[str, Any]] = []
        while True:
            f = json.loads(await asyncio.wait_for(ws.recv(), 60))
            frames.append(f)
            if f["id"] == "main" and f["status"] != "streaming":
                break
        return {"frames": frames, "open": ws.state.name}


def test_a_websocket_survives_hostile_frames_and_its_stream_is_unchanged(server: ServerProcess) -> None:
    alone = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {ALPHA}"},
                       json=chat(Q, max_tokens=40), timeout=60).json()["choices"][0]["message"]["content"]
    out = asyncio.run(_ws_session(server))
    frames = out["frames"]
    final = frames[-1]
    assert final["status"] == "complete" and final["data"]["text"] == alone
    errors = {f["id"]: f["error"]["code"] for f in frames if f["status"] == "error"}
    assert errors.get("s1") == "invalid_text" and errors.get("s2") == "invalid_text"
    assert errors.get("c1") == "not_found" and errors.get("c2") == "not_found"
    assert errors.get("r1") == "invalid_value"
    assert errors.get("big") is None  # over max_body_bytes: refused before it is read as JSON, id unknown
    none_ids = [f["error"]["code"] for f in frames if f["status"] == "error" and f["id"] is None]
    # no id could be read from these: nesting, Infinity (n1), not JSON; a surrogate in the id; binary; size
    assert sorted(none_ids) == sorted(["invalid_json"] * 3 + ["invalid_text", "binary_frame", "frame_too_large"]), none_ids
    assert any(f["id"] == "h" and f["data"]["status"] == "ok" for f in frames)
    assert "internal_error" not in errors.values()
    assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"


def test_slow_clients_are_cut_off(server: ServerProcess) -> None:
    # headers that never end: 408 and closed after header_timeout_s (1 s here)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        for _ in range(5):
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            time.sleep(0.4)
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
        assert time.monotonic() - t0 < 5
    # a connection that sends nothing at all is closed too
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        assert s.recv(4096).startswith(b"HTTP/1.1 408")
    # a body that trickles in: 408 body_timeout once body_timeout_s (1 s) has passed
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ALPHA.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\": ")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 408") and b"body_timeout" in data, data[:300]
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'realm_refusals_total{reason="header_timeout"}' in metrics
    assert 'realm_refusals_total{reason="body_timeout"}' in metrics
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_websocket_disconnects_count_as_cancelled(server: ServerProcess) -> None:
    def count(metrics: str) -> float:
        for line in metrics.splitlines():
            if line.startswith('realm_requests_total{endpoint="/ws",status="cancelled"}'):
                return float(line.split()[-1])
        return 0.0

    before = count(httpx.get(server.url + "/metrics", timeout=10).text)

    async def go() -> None:
        url = server.url.replace("http", "ws") + f"/ws?api_key={ALPHA}"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"id": 1, "function": "generate",
                                      "params": {"prompt": "Count:", "max_tokens": 300, "ignore_eos": True}}))
            await ws.recv()  # one token, then hang up

    asyncio.run(go())
    deadline = time.time() + 10
    while count(httpx.get(server.url + "/metrics", timeout=10).text) < before + 1 and time.time() < deadline:
        time.sleep(0.1)
    assert count(httpx.get(server.url + "/metrics", timeout=10).text) == before + 1


TIGHT = """
[server]
max_queue = 2
request_timeout_s = 2
shutdown_grace_s = 3

[[tenants]]
name = "one"
api_keys = ["sk-one-00000001"]
max_queue = 1

[[tenants]]
name = "two"
api_keys = ["sk-two-00000001"]
"""


def _stream(url: str, key: str, body: dict[str, Any], out: list[Any]) -> None:
    try:
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as r:
            lines = [x for x in r.iter_lines() if x] if r.status_code == 200 else [r.read().decode()]
            out.append((r.status_code, dict(r.headers), lines))
    except httpx.HTTPError as e:
        out.append((0, {}, [repr(e)]))


def test_queues_are_bounded_and_requests_time_out(model_dir: Path, tmp_path: Path) -> None:
    s = ServerProcess(model_dir, tmp_path, config=TIGHT, extra=["--dtype", "int4", "--max-slots", "1"])
    try:
        long = {"model": MODEL, "prompt": "Count to a thousand:", "max_tokens": 450, "ignore_eos": True}
        out: list[Any] = []
        first = threading.Thread(target=_stream, args=(s.url, "sk-two-00000001", long, out))
        first.start()  # takes the only slot
        time.sleep(0.5)
        waiters = [threading.Thread(target=_stream, args=(s.url, "sk-two-00000001", long, out)) for _ in range(2)]
        for t in waiters:
            t.start()
        time.sleep(0.5)
        # the global queue (2) is full: refused at once with 503 and Retry-After
        r = httpx.post(s.url + "/v1/completions", json={**long, "max_tokens": 4}, timeout=10,
                       headers={"Authorization": "Bearer sk-two-00000001"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_overloaded", r.text
        assert int(r.headers["Retry-After"]) >= 1
        for t in [first, *waiters]:
            t.join(60)
        # the first ran into request_timeout_s (2 s): its stream ends with the error, then [DONE]
        timed_out = [o for o in out if o[0] == 200 and any('"request_timeout"' in x for x in o[2])]
        assert timed_out and all(o[2][-1] == "data: [DONE]" for o in timed_out)
        # a tenant's own queue: "one" may have 1 request waiting
        out.clear()
        hold = threading.Thread(target=_stream, args=(s.url, "sk-two-00000001", {**long, "max_tokens": 60}, out))
        hold.start()
        time.sleep(0.4)
        wait1 = threading.Thread(target=_stream, args=(s.url, "sk-one-00000001", {**long, "max_tokens": 4}, out))
        wait1.start()
        time.sleep(0.4)
        r = httpx.post(s.url + "/v1/completions", json={**long, "max_tokens": 4}, timeout=10,
                       headers={"Authorization": "Bearer sk-one-00000001"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full", r.text
        hold.join(60)
        wait1.join(60)
        # not streamed: the timeout is a 408 with the reason
        r = httpx.post(s.url + "/v1/completions", json=long, timeout=60,
                       headers={"Authorization": "Bearer sk-two-00000001"})
        assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout", r.text
        metrics = httpx.get(s.url + "/metrics", timeout=10).text
        for reason in ("server_overloaded", "queue_full", "request_timeout"):
            assert f'realm_refusals_total{{reason="{reason}"}}' in metrics, reason
        assert httpx.get(s.url + "/health", timeout=10).json()["waiting"] == 0
    finally:
        s.stop()


DRAIN = """
[server]
shutdown_grace_s = 3

[[tenants]]
name = "two"
api_keys = ["sk-two-00000001"]
"""


def test_sigterm_drains_http_and_websocket_alike(model_dir: Path, tmp_path: Path) -> None:
    grace = 3.0
    s = ServerProcess(model_dir, tmp_path, config=DRAIN, extra=["--dtype", "int4"])
    try:
        long = {"model": MODEL, "prompt": "Count to a thousand:", "max_tokens": 450, "ignore_eos": True}
        out: list[Any] = []
        http = threading.Thread(target=_stream, args=(s.url, "sk-two-00000001", long, out))
        http.start()
        ws_frames: list[dict[str, Any]] = []

        async def ws_run() -> None:
            url = s.url.replace("http", "ws") + "/ws?api_key=sk-two-00000001"
            async with websockets.connect(url) as ws:
                await ws.send(json.dumps({"id": "w", "function": "generate",
                                          "params": {"prompt": "Count to a thousand:", "max_tokens": 450,
                                                     "ignore_eos": True}}))
                while True:
                    f = json.loads(await ws.recv())
                    ws_frames.append(f)
                    if f["status"] != "streaming":
                        break

        wst = threading.Thread(target=lambda: asyncio.run(ws_run()))
        wst.start()
        time.sleep(1.0)  # both streaming
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        during = []
        while time.monotonic() - t0 < grace - 1.0:  # the listener answers 503 while it drains
            r = httpx.post(s.url + "/v1/completions", json={**long, "max_tokens": 2}, timeout=5,
                           headers={"Authorization": "Bearer sk-two-00000001"})
            during.append((r.status_code, r.json()["error"]["code"], r.headers.get("Retry-After")))
            time.sleep(0.2)
        code = s.proc.wait(30)
        elapsed = time.monotonic() - t0
        http.join(10)
        wst.join(10)
        assert code == 0
        assert elapsed < grace, elapsed  # the process exits within the grace
        assert during and all(d == (503, "shutting_down", "5") for d in during), during
        status, _, lines = out[0]
        assert status == 200 and lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "abort"
        assert ws_frames[-1]["status"] == "cancelled" and ws_frames[-1]["data"]["finish_reason"] == "abort"
        assert len(ws_frames) > 5  # it streamed through the drain
    finally:
        s.stop()


def test_metrics_labels_stay_few_whatever_paths_clients_send(server: ServerProcess) -> None:
    for i in range(30):
        httpx.get(server.url + f"/v1/no-such-{i}", timeout=10)
        httpx.get(server.url + f"/v1/models/model-{i}", timeout=10, headers={"Authorization": f"Bearer {ALPHA}"})
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    endpoints = {line.split('endpoint="')[1].split('"')[0] for line in metrics.splitlines()
                 if line.startswith("realm_requests_total{")}
    assert "other" in endpoints and "/v1/models/{model}" in endpoints
    assert not any("no-such" in e or "model-" in e for e in endpoints), endpoints
