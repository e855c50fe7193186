"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""
from __future__ import annotations

from typing import Callable, Iterator

from ..service import ServiceStats

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: scrapes stay small

ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/ws", "/health", "/metrics",
                       "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "(headers)"})
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("realm_requests", "Requests by endpoint and HTTP status (or WebSocket outcome)",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("realm_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("realm_generation_tokens", "Generated tokens", registry=r)
        self.ttft = Histogram("realm_time_to_first_token_seconds", "Time to first token", buckets=_LATENCY, registry=r)
        self.per_token = Histogram("realm_time_per_output_token_seconds", "Decode time per output token after the first",
                                   buckets=_PER_TOKEN, registry=r)
        self.e2e = Histogram("realm_request_duration_seconds", "Request duration", buckets=_LATENCY, registry=r)
        self.refusals = Counter("realm_refusals", "Requests refused, or stopped before their end, by reason (the "
                                "error code: invalid_json, queue_full, server_overloaded, rate_limit_exceeded, "
                                "shutting_down, header_timeout, body_timeout, request_timeout, ...)",
                                ["reason"], registry=r)
        self.adapter_requests = Counter("realm_adapter_requests", "Finished requests by LoRA adapter ((base): none)",
                                        ["adapter"], registry=r)
        self.adapter_tokens = Counter("realm_adapter_generation_tokens", "Generated tokens by LoRA adapter",
                                      ["adapter"], registry=r)
        self.adapters_loaded = Gauge("realm_adapters_loaded", "LoRA adapters loaded", registry=r)
        self.running = Gauge("realm_requests_running", "Requests holding a KV slot", registry=r)
        self.waiting = Gauge("realm_requests_waiting", "Requests queued for a slot", registry=r)
        self.kv_usage = Gauge("realm_kv_cache_usage_ratio", "KV tokens in use / KV capacity", registry=r)
        self.kv_tokens = Gauge("realm_kv_cache_tokens", "KV tokens in use", registry=r)

    def watch(self, stats: Callable[[], ServiceStats], adapters: Callable[[], list[str]] | None = None) -> None:
        """Read the live gauges from the model's stats at each scrape."""
        self.registry.register(_Speculative(stats))
        self.registry.register(_PrefixCache(stats))
        if adapters is not None:
            self.adapters_loaded.set_function(lambda: len(adapters()))
        self.running.set_function(lambda: stats().running)
        self.waiting.set_function(lambda: stats().waiting)
        self.kv_tokens.set_function(lambda: stats().kv_used)
        self.kv_usage.set_function(lambda: (lambda s: s.kv_used / max(1, s.kv_capacity))(stats()))

    def refused(self, endpoint: str, status: int, reason: str | None) -> None:
        """One request answered with an error (HTTP status, or the WebSocket's error frame).
        Paths outside the API are counted as "other": labels stay few whatever clients send."""
        if endpoint.startswith("/v1/models/"):
            endpoint = "/v1/models/{model}"
        elif endpoint not in ENDPOINTS:
            endpoint = "other"
        self.requests.labels(endpoint, str(status)).inc()
        self.refusals.labels(reason or "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PrefixCache(Collector):
    """Prefix caching: requests that found their prompt's beginning cached, the prompt tokens that
    saved, and all prompt tokens admitted (the hit rate is cached / prompt tokens)."""

    def __init__(self, stats: Callable[[], ServiceStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        p = self.stats().prefix_cache
        if p is None:
            return
        for key, name, help_ in (("hits", "realm_prefix_cache_hits", "Requests that started past a cached prefix"),
                                 ("cached_tokens", "realm_prefix_cache_tokens", "Prompt tokens taken from the cache"),
                                 ("prompt_tokens", "realm_prefix_cache_prompt_tokens", "Prompt tokens admitted")):
            c = CounterMetricFamily(name, help_)
            c.add_metric([], p[key])
            yield c


class _Speculative(Collector):
    """Speculative decoding, by method: draft tokens fed, accepted, emitted by verify steps; the
    acceptance rate and the mean tokens a verify step emits (accepted + 1)."""

    def __init__(self, stats: Callable[[], ServiceStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self.stats()
        if st.speculative is None or st.speculative_method is None:
            return
        s, m = st.speculative, [st.speculative_method]
        for key, help_ in (("verify_steps", "Verify steps (rows that fed draft tokens)"),
                           ("draft_tokens", "Draft tokens fed for verification"),
                           ("accepted_tokens", "Draft tokens accepted"),
                           ("emitted_tokens", "Tokens emitted by verify steps (accepted + one each)")):
            c = CounterMetricFamily(f"realm_spec_{key}", help_, labels=["method"])
            c.add_metric(m, s[key])
            yield c
        rate = GaugeMetricFamily("realm_spec_acceptance_rate", "Accepted / draft tokens so far", labels=["method"])
        rate.add_metric(m, s["accepted_tokens"] / s["draft_tokens"] if s["draft_tokens"] else 0.0)
        yield rate
        mean = GaugeMetricFamily("realm_spec_mean_accepted_length",
                                 "Tokens emitted per verify step (accepted drafts + 1), so far", labels=["method"])
        mean.add_metric(m, s["emitted_tokens"] / s["verify_steps"] if s["verify_steps"] else 0.0)
        yield mean
