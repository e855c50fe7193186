"""Tenant limits and config parsing, with a hand-driven clock (no model, no sockets)."""
from __future__ import annotations

import time

import pytest

from realm_web.server.config import ConfigError, Tenant, parse_config
from realm_web.server.limits import LimitExceeded, Limiter


def wait_healthy(client) -> None:  # type: ignore[no-untyped-def]
    """Until the app's model is loaded (/health answers 200), at most 10 s."""
    for _ in range(100):
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.1)


def test_requests_per_minute_slide_with_the_window() -> None:
    lim, t = Limiter(), Tenant("a", ("k" * 8,), requests_per_minute=2)
    for now in (0.0, 10.0):
        lim.finish(lim.admit(t, 1, now), 1)
    with pytest.raises(LimitExceeded) as e:
        lim.admit(t, 1, 30.0)
    assert e.value.retry_after_s == pytest.approx(30.0)
    lim.admit(t, 1, 60.5)  # the first one left the window


def test_tokens_per_minute_charge_then_refund() -> None:
    lim, t = Limiter(), Tenant("a", ("k" * 8,), tokens_per_minute=100)
    a = lim.admit(t, 80, 0.0)  # prompt + max_tokens reserved
    with pytest.raises(LimitExceeded):
        lim.admit(t, 30, 1.0)
    lim.finish(a, 20)  # used only 20: 60 come back
    lim.admit(t, 70, 2.0)
    with pytest.raises(LimitExceeded) as e:
        lim.admit(t, 20, 3.0)
    assert e.value.retry_after_s == pytest.approx(57.0)  # when the first request's 20 expire
    with pytest.raises(LimitExceeded):
        lim.admit(t, 101, 100.0)  # can never fit


def test_concurrency_and_tenants_are_separate() -> None:
    lim = Limiter()
    a, b = Tenant("a", ("k" * 8,), max_concurrent=1), Tenant("b", ("j" * 8,), max_concurrent=1)
    ta = lim.admit(a, 1, 0.0)
    with pytest.raises(LimitExceeded):
        lim.admit(a, 1, 0.0)
    lim.admit(b, 1, 0.0)
    lim.finish(ta, 1)
    lim.admit(a, 1, 0.1)


def test_config_parsing_and_errors() -> None:
    cfg = parse_config({"server": {"max_body_bytes": 4096}, "tenants": [
        {"name": "a", "api_keys": ["sk-aaaaaaaa"], "requests_per_minute": 5, "models": ["m"]}]})
    assert cfg.tenant_for_key("sk-aaaaaaaa").name == "a" and cfg.tenant_for_key("nope") is None
    assert not cfg.open and cfg.max_body_bytes == 4096
    assert parse_config({}).open and parse_config({}).tenant_for_key(None) is not None
    for bad, msg in [
        ({"tenants": [{"name": "a", "api_keys": ["short"]}]}, "8+"),
        ({"tenants": [{"name": "a", "api_keys": ["sk-aaaaaaaa"], "rpm": 3}]}, "unknown keys"),
        ({"tenants": [{"name": "a", "api_keys": ["sk-aaaaaaaa"]}, {"name": "b", "api_keys": ["sk-aaaaaaaa"]}]},
         "two tenants"),
        ({"tenants": [{"name": "a", "api_keys": ["sk-aaaaaaaa"], "max_tokens": -1}]}, "non-negative"),
        ({"server": {"port": 1}}, "takes only"),
        ({"tenant": []}, "unknown sections"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_config(bad)


@pytest.mark.parametrize("raw,match", [
    ({"tenants": [{"name": "a\ud800", "api_keys": ["k" * 10]}]}, "unique non-empty name"),
    ({"tenants": [{"name": "a", "api_keys": ["k\x00" * 5]}]}, "printable"),
    ({"tenants": [{"name": "a", "api_keys": ["k" * 10], "models": ["m\n"]}]}, "models"),
    ({"tenants": [{"name": "a", "api_keys": ["k" * 10], "max_queue": -1}]}, "max_queue"),
    ({"server": {"max_queue": "lots"}}, "max_queue"),
    ({"server": {"header_timeout_s": 0}}, "header_timeout_s"),
    ({"server": {"request_timeout_s": True}}, "request_timeout_s"),
    ({"server": {"body_timeout_s": 1e9}}, "body_timeout_s"),
    ({"server": {"metrics_api_key": 5}}, "metrics_api_key"),
])
def test_config_refuses_bad_values_naming_them(raw: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_config_files_that_are_not_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from realm_web.server.config import load_config

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(deep)
    for text in ('{"server": NaN', "\xff\xfe", "[[tenants]]\nname = 1 2"):
        f = tmp_path / ("x.json" if text.startswith("{") else "x.toml")
        f.write_bytes(text.encode("latin-1"))
        with pytest.raises(ConfigError):
            load_config(f)
    cfg = parse_config({"server": {"max_queue": 0, "request_timeout_s": 0},
                        "tenants": [{"name": "t", "api_keys": ["k" * 10], "max_queue": 3}]})
    assert cfg.max_queue == 0 and cfg.request_timeout_s == 0 and cfg.tenants[0].max_queue == 3


def test_an_unexpected_error_in_a_frame_is_that_frames_own(model_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Fault injection into the real app (in process, real engine): the frame handler hits an
    exception nobody planned for; its frame gets internal_error, the socket and a generate
    already streaming on it carry on."""
    import json

    from starlette.testclient import TestClient

    from realm_web import LLM
    from realm_web.server import app as app_module
    from realm_web.server import protocol

    real = protocol.parse_completion

    def flaky(body, model, vocab):  # type: ignore[no-untyped-def]
        if body.get("prompt") == "boom":
            raise ZeroDivisionError("a bug")
        return real(body, model, vocab)

    monkeypatch.setattr(protocol, "parse_completion", flaky)
    llm = LLM(model_dir, dtype="int4", max_slots=2, max_length=256)
    with TestClient(app_module.create_app(lambda: llm)) as client:
        wait_healthy(client)
        with client.websocket_connect("/ws") as ws:
            ws.send_text(json.dumps({"id": "ok", "function": "generate",
                                     "params": {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}}))
            ws.send_text(json.dumps({"id": "bad", "function": "generate", "params": {"prompt": "boom"}}))
            frames = []
            while True:
                f = ws.receive_json()
                frames.append(f)
                if f["id"] == "ok" and f["status"] != "streaming":
                    break
            ws.send_text(json.dumps({"id": "after", "function": "health"}))
            after = ws.receive_json()
        metrics = client.get("/metrics").text
    bad = [f for f in frames if f["id"] == "bad"]
    assert bad and bad[0]["status"] == "error" and bad[0]["error"]["code"] == "internal_error"
    assert frames[-1]["status"] == "complete" and frames[-1]["data"]["tokens_generated"] == 8
    assert after["id"] == "after" and after["data"]["status"] == "ok"
    assert 'realm_refusals_total{reason="internal_error"} 1.0' in metrics


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_speculative_server_answers_as_plain_and_counts(model_dir, method) -> None:  # type: ignore[no-untyped-def]
    """The real app over an LLM with speculation (n-gram, or the int4 export drafting): an
    OpenAI completion equals the plain model's, and /metrics carries the counters by method."""
    from starlette.testclient import TestClient

    from realm_web import LLM
    from realm_web.server import app as app_module

    text = "The council approved the library, postponed the road repairs and asked for a new forecast."
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": f"Repeat exactly: {text}"}],
            "max_tokens": 32, "temperature": 0}
    plain = LLM(model_dir, dtype="fp32", max_slots=2, max_length=256)
    want = plain.generate(body["messages"], max_tokens=32)[0].text  # type: ignore[arg-type]
    llm = LLM(model_dir, dtype="fp32", max_slots=2, max_length=256,
              speculative={"method": method, "num_speculative_tokens": 4, "adaptive": False})
    with TestClient(app_module.create_app(lambda: llm)) as client:
        wait_healthy(client)
        body["model"] = client.get("/v1/models").json()["data"][0]["id"]
        r = client.post("/v1/chat/completions", json=body)
        metrics = client.get("/metrics").text
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == want
    st = llm.scheduler.spec_stats
    assert st["accepted_tokens"] > 0
    assert f'realm_spec_accepted_tokens_total{{method="{method}"}} {float(st["accepted_tokens"])}' in metrics
    assert f'realm_spec_mean_accepted_length{{method="{method}"}}' in metrics


def test_prefix_caching_server_reuses_a_conversation_and_counts(model_dir) -> None:  # type: ignore[no-untyped-def]
    """The real app over an LLM with prefix caching: the second turn of a chat over HTTP starts past
    the first turn's cache (the same answer as without it, fp32), and /metrics counts the hit."""
    from starlette.testclient import TestClient

    from realm_web import LLM
    from realm_web.server import app as app_module

    turn1 = [{"role": "user", "content": "What is the capital of France?"}]
    llm = LLM(model_dir, dtype="fp32", max_slots=2, max_length=512, prefix_caching=True)
    plain = LLM(model_dir, dtype="fp32", max_slots=2, max_length=512)
    with TestClient(app_module.create_app(lambda: llm)) as client:
        wait_healthy(client)
        model = client.get("/v1/models").json()["data"][0]["id"]
        a1 = client.post("/v1/chat/completions", json={"model": model, "messages": turn1, "max_tokens": 16, "temperature": 0}).json()
        turn2 = turn1 + [{"role": "assistant", "content": a1["choices"][0]["message"]["content"]},
                         {"role": "user", "content": "And of Italy?"}]
        a2 = client.post("/v1/chat/completions", json={"model": model, "messages": turn2, "max_tokens": 16, "temperature": 0}).json()
        metrics = client.get("/metrics").text
    assert a2["choices"][0]["message"]["content"] == plain.generate([turn2], max_tokens=16)[0].text  # type: ignore[list-item]
    st = llm.scheduler.prefix_stats
    assert st["hits"] >= 1 and st["cached_tokens"] > 0
    assert f"realm_prefix_cache_hits_total {float(st['hits'])}" in metrics
    assert f"realm_prefix_cache_tokens_total {float(st['cached_tokens'])}" in metrics
