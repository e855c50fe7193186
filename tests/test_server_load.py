"""64 concurrent streaming clients (half HTTP/SSE, half WebSocket) against a real server process:
every stream completes, matches the answer the same question gets alone, and the server's
memory comes back near where it was."""
from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import httpx
import pytest

from load_clients import QUESTIONS, run_clients
from server_proc import ServerProcess

pytestmark = pytest.mark.model
MAX_TOKENS = 24


def test_64_concurrent_streaming_clients(model_dir: Path, tmp_path: Path) -> None:
    s = ServerProcess(model_dir, tmp_path, config=None, extra=["--dtype", "int4"])
    try:
        model = "smollm2-135m-instruct"
        alone = {}
        for q in QUESTIONS:  # the reference: each question alone, not streamed
            r = httpx.post(s.url + "/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": q}], "temperature": 0,
                "max_tokens": MAX_TOKENS}, timeout=120).json()
            alone[q] = r["choices"][0]["message"]["content"]
        asyncio.run(run_clients(s.url, None, 16, MAX_TOKENS, model))  # warm: slots, pages, allocator
        gc.collect()
        rss0 = s.rss_mb()
        t0 = time.perf_counter()
        results = asyncio.run(run_clients(s.url, None, 64, MAX_TOKENS, model))
        wall = time.perf_counter() - t0
        errors = [(r.transport, r.error) for r in results if r.error]
        assert not errors, errors
        assert {r.transport for r in results} == {"http", "ws"}
        wrong = [(r.transport, r.question, r.text, alone[r.question]) for r in results if r.text != alone[r.question]]
        assert not wrong, wrong[:3]
        assert all(r.finish_reason in ("stop", "length") and r.tokens > 0 for r in results)
        h = httpx.get(s.url + "/health", timeout=10).json()
        assert h["running"] == 0 and h["waiting"] == 0
        time.sleep(0.5)
        rss1 = s.rss_mb()
        print(f"64 clients in {wall:.1f} s; server RSS {rss0:.0f} MB before, {rss1:.0f} MB after")
        assert rss1 < rss0 * 1.10 + 32, (rss0, rss1)
        metrics = httpx.get(s.url + "/metrics", timeout=10).text
        assert 'realm_requests_total{endpoint="/ws",status="200"} 40.0' in metrics
    finally:
        s.stop()
