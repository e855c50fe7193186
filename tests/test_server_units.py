"""Tenant limits and config parsing, with a hand-driven clock (no model, no sockets)."""
from __future__ import annotations

import pytest

from realm_web.server.config import ConfigError, Tenant, parse_config
from realm_web.server.limits import LimitExceeded, Limiter


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
