"""Soak: a real `realm-web serve` (loopback) under N mixed clients for T seconds, bounded.

Clients loop until the time is up: half stream chat over HTTP/SSE, half over the WebSocket
protocol, and a quarter of all requests hang up mid-stream on purpose. Reported: requests
completed, cut (on purpose), lost (an error or a stream that did not end properly), 5xx, TTFT
p50/p99, aggregate tokens/s against one client alone in the same run (a ratio), the server's RSS
after warm-up, after the soak and after a rest, and whether its gauges came back to 0.

    .venv/bin/python bench/soak.py [--clients 64] [--seconds 60] [--max-tokens 32] [--model DIR]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from load_clients import QUESTIONS, ClientResult, http_client, ws_client  # noqa: E402
from server_proc import ServerProcess  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


async def soak(url: str, model: str, clients: int, seconds: float, max_tokens: int, seed: int) -> list[ClientResult]:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    results: list[ClientResult] = []

    async def client(i: int) -> None:
        while time.monotonic() < deadline:
            q = QUESTIONS[rng.randrange(len(QUESTIONS))]
            cut = rng.randrange(1, max_tokens) if rng.random() < 0.25 else None
            if i % 2 == 0:
                r = await http_client(url, None, q, max_tokens, model, True, cut)
            else:
                r = await ws_client(url, None, q, max_tokens, True, cut)
            results.append(r)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return results


def gauges(url: str) -> dict[str, float]:
    import httpx

    out = {}
    for line in httpx.get(url + "/metrics", timeout=10, trust_env=False).text.splitlines():
        for g in ("realm_requests_running", "realm_requests_waiting", "realm_kv_cache_tokens"):
            if line.startswith(g + " "):
                out[g] = float(line.split()[1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--max-slots", type=int, default=16)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rest", type=float, default=10.0, help="seconds of rest before the last RSS reading")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak.json"))
    a = ap.parse_args()
    if a.model:
        model_dir = Path(a.model)
    else:
        from realm_web.export.pull import pull

        model_dir = pull()
    s = ServerProcess(model_dir, Path(tempfile.mkdtemp(prefix="realm-soak-")), config=None,
                      extra=["--dtype", a.dtype, "--max-slots", str(a.max_slots)])
    try:
        import httpx

        model = httpx.get(s.url + "/v1/models", timeout=30, trust_env=False).json()["data"][0]["id"]
        rss_start = s.rss_mb()
        asyncio.run(soak(s.url, model, a.max_slots, 5.0, a.max_tokens, a.seed))  # warm: every batch shape
        rss_warm = s.rss_mb()
        alone = asyncio.run(soak(s.url, model, 1, 5.0, a.max_tokens, a.seed + 1))  # the anchor: one client
        one_tok_s = sum(r.tokens for r in alone if not r.cut and not r.error) / 5.0
        print(f"soak: {a.clients} clients for {a.seconds:g} s", file=sys.stderr)
        t0, cpu0 = time.perf_counter(), s.cpu_s()
        res = asyncio.run(soak(s.url, model, a.clients, a.seconds, a.max_tokens, a.seed + 2))
        wall = time.perf_counter() - t0
        server_cpu = s.cpu_s() - cpu0
        rss_after = s.rss_mb()
        time.sleep(0.5)
        g_after = gauges(s.url)
        time.sleep(a.rest)
        rss_rest = s.rss_mb()
    finally:
        s.stop()
    done = [r for r in res if not r.cut and not r.error]
    cut = [r for r in res if r.cut]
    lost = [r for r in res if r.error and not r.cut]
    five = [r for r in res if r.status >= 500]
    ttft = [r.ttft_s for r in res if r.ttft_s > 0]
    tokens = sum(r.tokens for r in done) + sum(len(r.events) if r.transport == "http" else 0 for r in cut)
    agg = sum(r.tokens for r in done) / wall
    row = {"clients": a.clients, "seconds": round(wall, 1), "requests": len(res), "completed": len(done),
           "cut_on_purpose": len(cut), "lost": len(lost), "http_5xx": len(five),
           "lost_examples": sorted({str(r.error) for r in lost})[:5],
           "ttft_p50_ms": round(1e3 * statistics.median(ttft), 1) if ttft else None,
           "ttft_p99_ms": round(1e3 * pct(ttft, 0.99), 1) if ttft else None,
           "completed_tok_s": round(agg, 1), "one_client_tok_s": round(one_tok_s, 1),
           "vs_one_client": round(agg / one_tok_s, 2) if one_tok_s else None,
           "tokens_seen": tokens, "server_cpu_s": round(server_cpu, 1),
           "rss_mb": {"start": round(rss_start), "warm": round(rss_warm), "after": round(rss_after),
                      "after_rest": round(rss_rest)},
           "gauges_after": g_after}
    print(f"\nsoak: {a.dtype}, {a.max_slots} slots, {a.clients} clients (half SSE, half WebSocket, a quarter cut "
          f"mid-stream), up to {a.max_tokens} tokens, {wall:.0f} s; load {os.getloadavg()[0]:.1f}")
    print(f"{'requests':>9} {'completed':>10} {'cut':>6} {'lost':>5} {'5xx':>4} {'TTFT p50':>9} {'p99 ms':>8} "
          f"{'tok/s':>7} {'vs 1 client':>11}   RSS MB warm -> after -> rest")
    print(f"{len(res):9d} {len(done):10d} {len(cut):6d} {len(lost):5d} {len(five):4d} {row['ttft_p50_ms'] or 0:9.1f} "
          f"{row['ttft_p99_ms'] or 0:8.1f} {agg:7.1f} {row['vs_one_client'] or 0:10.2f}x   "
          f"{rss_warm:.0f} -> {rss_after:.0f} -> {rss_rest:.0f}")
    print(f"gauges after: {g_after}")
    env = {"dtype": a.dtype, "max_slots": a.max_slots, "max_tokens": a.max_tokens, "seed": a.seed,
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "soak": row}, indent=1))
    print(f"wrote {out}")
    return 1 if lost or five else 0


if __name__ == "__main__":
    sys.exit(main())
