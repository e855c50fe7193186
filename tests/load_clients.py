"""Concurrent streaming clients for the server load test and bench/server_load.py: half speak
OpenAI HTTP with SSE, half the /ws protocol, each on its own connection."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "What is 2 + 2?",
             "Write a haiku about the sea.", "Who wrote Hamlet?", "What do bees make?",
             "Give me a synonym for happy.", "How many days are in a week?"]


@dataclass
class ClientResult:
    transport: str
    question: str
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    ttft_s: float = 0.0
    total_s: float = 0.0
    error: str | None = None
    events: list[Any] = field(default_factory=list)
    status: int = 0  # HTTP status (101 for a WebSocket that opened)
    cut: bool = False  # the client hung up on purpose (cut_after)


async def http_client(url: str, key: str | None, q: str, max_tokens: int, model: str,
                      ignore_eos: bool = False, cut_after: int | None = None) -> ClientResult:
    """One streamed chat over HTTP/SSE; with `cut_after`, hang up after that many text pieces."""
    r = ClientResult("http", q)
    body = {"model": model, "messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": ignore_eos}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        # loopback: never a proxy, no TLS context (building one costs ~50 ms, not the server's time)
        async with httpx.AsyncClient(timeout=300, trust_env=False, verify=False) as c:
            t0 = time.perf_counter()
            async with c.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as resp:
                r.status = resp.status_code
                if resp.status_code != 200:
                    await resp.aread()
                    r.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    return r
                done = False
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    ev = json.loads(line[6:])
                    if ev.get("usage"):
                        r.tokens = ev["usage"]["completion_tokens"]
                    for ch in ev.get("choices", []):
                        piece = ch["delta"].get("content") or ""
                        if piece and not r.text:
                            r.ttft_s = time.perf_counter() - t0
                        r.text += piece
                        r.finish_reason = ch.get("finish_reason") or r.finish_reason
                        if piece:
                            r.events.append(piece)
                    if cut_after is not None and len(r.events) >= cut_after:
                        r.cut = True
                        break
                if r.cut:
                    done = True
                if not done:
                    r.error = "the stream ended without [DONE]"
    except Exception as e:  # noqa: BLE001 - reported per client
        r.error = f"{type(e).__name__}: {e}"
    r.total_s = time.perf_counter() - t0
    return r


async def ws_client(url: str, key: str | None, q: str, max_tokens: int, ignore_eos: bool = False,
                    cut_after: int | None = None) -> ClientResult:
    """One generate on its own /ws socket; with `cut_after`, close the socket after that many tokens."""
    from websockets.asyncio.client import connect

    r = ClientResult("ws", q)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t0 = time.perf_counter()
    try:
        async with connect(url.replace("http", "ws", 1) + "/ws", additional_headers=headers, max_size=None) as ws:
            r.status = 101
            await ws.send(json.dumps({"id": 1, "function": "generate", "params": {
                "messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": max_tokens,
                "ignore_eos": ignore_eos}}))
            n = 0
            async for msg in ws:
                f = json.loads(msg)
                if f["status"] == "streaming":
                    if n == 0:
                        r.ttft_s = time.perf_counter() - t0
                    assert f["data"]["index"] == n, "token frames out of order"
                    n += 1
                    r.text += f["data"]["text"]
                    if cut_after is not None and n >= cut_after:
                        r.cut = True
                        break
                    continue
                if f["status"] == "complete":
                    r.tokens = f["data"]["tokens_generated"]
                    r.finish_reason = f["data"]["finish_reason"]
                    if f["data"]["text"] != r.text or r.tokens != n:
                        r.error = "the final frame disagrees with the streamed frames"
                else:
                    r.error = f"{f['status']}: {f.get('error')}"
                break
    except Exception as e:  # noqa: BLE001
        r.error = f"{type(e).__name__}: {e}"
    r.total_s = time.perf_counter() - t0
    return r


async def run_clients(url: str, key: str | None, n: int, max_tokens: int, model: str,
                      ignore_eos: bool = False) -> list[ClientResult]:
    """n clients at once, alternating HTTP and WebSocket, question i % len(QUESTIONS)."""
    jobs = []
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        jobs.append(http_client(url, key, q, max_tokens, model, ignore_eos) if i % 2 == 0
                    else ws_client(url, key, q, max_tokens, ignore_eos))
    return list(await asyncio.gather(*jobs))
