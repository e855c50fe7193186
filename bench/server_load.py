"""Server under load: requests/s, aggregate tokens/s and TTFT p50/p90/p99 with 1, 8, 32 and 64
concurrent streaming clients (half HTTP/SSE, half WebSocket; greedy chat, each generating
--max-tokens tokens, EOS ignored), against the same requests streamed in-process through
LLM.stream (no HTTP) as the baseline, in the same run.

    .venv/bin/python bench/server_load.py [--model DIR] [--clients 1,8,32,64] [--max-tokens 64]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from load_clients import QUESTIONS, run_clients  # noqa: E402
from server_proc import ServerProcess  # noqa: E402


def _client_share(args: tuple[str, list[int], int, str]) -> list[Any]:
    """One load process: its share of the clients (by index, so HTTP/WS alternate as in run_clients)."""
    from load_clients import http_client, ws_client

    url, idx, max_tokens, model = args

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(
            http_client(url, None, QUESTIONS[i % len(QUESTIONS)], max_tokens, model, True) if i % 2 == 0
            else ws_client(url, None, QUESTIONS[i % len(QUESTIONS)], max_tokens, True) for i in idx)))

    return asyncio.run(go())


def drive(pool: Any, procs: int, url: str, n: int, max_tokens: int, model: str) -> list[Any]:
    """n clients spread over the pool's processes (one Python process cannot parse ~10k frames/s
    and also keep up with a GPU server: measured, its CPU time equals the wall time)."""
    shares = [list(range(k, n, procs)) for k in range(procs) if k < n]
    return [r for part in pool.map(_client_share, [(url, sh, max_tokens, model) for sh in shares]) for r in part]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def row(ttfts: list[float], tokens: int, n: int, wall: float) -> dict[str, Any]:
    return {"clients": n, "wall_s": round(wall, 3), "requests_per_s": round(n / wall, 2),
            "agg_tok_s": round(tokens / wall, 1), "ttft_p50_ms": round(1e3 * statistics.median(ttfts), 1),
            "ttft_p90_ms": round(1e3 * pct(ttfts, 0.9), 1), "ttft_p99_ms": round(1e3 * pct(ttfts, 0.99), 1)}


async def in_process(llm: Any, n: int, max_tokens: int) -> dict[str, Any]:
    from realm_web import SamplingParams

    p = SamplingParams(max_tokens=max_tokens, ignore_eos=True)

    async def one(q: str) -> tuple[float, int]:
        t0, first, k = time.perf_counter(), 0.0, 0
        async for d in llm.stream(q, p):
            if d.token_ids and not first:
                first = time.perf_counter() - t0
            k += len(d.token_ids)
        return first, k

    t0 = time.perf_counter()
    res = await asyncio.gather(*(one(QUESTIONS[i % len(QUESTIONS)]) for i in range(n)))
    return row([r[0] for r in res], sum(r[1] for r in res), n, time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="default: int4 on cpu, fp16 on cuda")
    ap.add_argument("--max-slots", type=int, default=16)
    ap.add_argument("--client-procs", type=int, default=None, help="load processes (default: half the cores, 1 to 8)")
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "server_load.json"))
    a = ap.parse_args()
    sizes = [int(x) for x in a.clients.split(",")]
    a.dtype = a.dtype or ("fp16" if a.device == "cuda" else "int4")
    if a.model:
        model_dir = Path(a.model)
    else:
        from realm_web.export.pull import pull

        model_dir = pull()
    rows: dict[str, dict[str, Any]] = {}
    s = ServerProcess(model_dir, Path(tempfile.mkdtemp(prefix="realm-load-")), config=None,
                      extra=["--dtype", a.dtype, "--max-slots", str(a.max_slots), "--device", a.device])
    procs = a.client_procs or max(1, min(8, (os.cpu_count() or 2) // 2))
    pool = multiprocessing.get_context("fork").Pool(procs)
    try:
        import httpx

        model = httpx.get(s.url + "/v1/models", timeout=30, trust_env=False).json()["data"][0]["id"]
        asyncio.run(run_clients(s.url, None, 8, 8, model))  # warm the server
        drive(pool, procs, s.url, procs, 2, model)  # and the load processes
        for n in sizes:
            t0, srv0 = time.perf_counter(), s.cpu_s()
            res = drive(pool, procs, s.url, n, a.max_tokens, model)
            wall = time.perf_counter() - t0
            cpu = {"server_cpu_s": round(s.cpu_s() - srv0, 2), "client_procs": procs}
            errors = [r.error for r in res if r.error]
            rows[f"server N={n}"] = {**row([r.ttft_s for r in res], sum(r.tokens for r in res), n, wall),
                                     "errors": len(errors), "error_examples": sorted(set(errors))[:3], **cpu}
            print(f"done: server N={n}", file=sys.stderr)
    finally:
        pool.terminate()
        s.stop()
    from realm_web import LLM

    llm = LLM(model_dir, dtype=a.dtype, device=a.device, max_slots=a.max_slots, max_length=512,
              threads=2 if a.device == "cpu" else None)
    asyncio.run(in_process(llm, 8, 8))
    for n in sizes:
        rows[f"in-process N={n}"] = asyncio.run(in_process(llm, n, a.max_tokens))
        print(f"done: in-process N={n}", file=sys.stderr)
    llm.close()
    print(f"\nserver load: {a.dtype} on {a.device} ({os.cpu_count()} cores), greedy chat, up to {a.max_tokens} tokens "
          f"each, clients half HTTP/SSE half WebSocket, max {a.max_slots} decoding at once; load {os.getloadavg()[0]:.1f}")
    print(f"{'':18} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'p90':>7} {'p99 ms':>7} {'tok/s vs in-process':>20}")
    for n in sizes:
        srv, base = rows[f"server N={n}"], rows[f"in-process N={n}"]
        srv["vs_in_process"] = round(srv["agg_tok_s"] / base["agg_tok_s"], 2) if base["agg_tok_s"] else 0
        for name, r in ((f"server N={n}", srv), (f"in-process N={n}", base)):
            extra = f"{srv['vs_in_process']:19.2f}x" if r is srv else ""
            print(f"{name:18} {r['requests_per_s']:7.2f} {r['agg_tok_s']:8.1f} {r['ttft_p50_ms']:9.1f} "
                  f"{r['ttft_p90_ms']:7.1f} {r['ttft_p99_ms']:7.1f} {extra}")
    env = {"device": a.device, "max_slots": a.max_slots, "dtype": a.dtype, "max_tokens": a.max_tokens, "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
