"""Continuous-batching benchmark: realm-web's scheduler + native engine under concurrent load,
against the same requests run one after another, and against the anchors, in one run.

Workload: N chat requests (N = --sizes), prompts of different lengths, greedy, exactly --new
tokens each (EOS ignored, so every engine makes the same amount of work), arriving --gap-ms
apart. realm-web serves them through `LLM.stream` (one coroutine per request, one shared engine
loop), as the server does. Reported per N:

* aggregate tokens/s: all generated tokens / time from the first arrival to the last token;
* time to first token (TTFT) p50 / p99, from each request's arrival;
* "one after another": the same requests served by one-at-a-time generation (what WebLLM-like
  runtimes do): each runs alone, in arrival order; TTFT includes the wait for the ones before;
* anchors: transformers batched `generate` (static batch: everyone starts together, its TTFT is
  the batch prefill), and with --anchors plain,genai also a plain torch.onnx.export on
  onnxruntime (static batch, IO binding) and onnxruntime-genai (static batch, up to 32).

Ratios: realm-web concurrent over each baseline, same N, same run.
`same` (realm-web rows) tells whether every request's tokens equal its one-at-a-time tokens.

    .venv/bin/python bench/batching.py                          # CPU: int4, N = 1 4 16 64
    python bench/batching.py --device cuda --dtype fp16 --sizes 1,16,128 --anchors hf,plain,genai
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import anchors  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one paragraph for a child who is eight years old and curious about plants.",
    "List three colors.",
    "Give me a short recipe for pancakes, with ingredients and steps.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet in two sentences, then name its author and the century it was written in.",
    "Hi",
    "Name a famous physicist and one of their discoveries.",
    "How many legs does a spider have?",
    "Describe a cat to someone who has never seen one, using at least three different senses.",
    "Translate 'good morning, how are you today?' to Spanish, French and German.",
    "What is 12 times 13?",
    "Tell me a joke about computers.",
    "What are the three states of matter? Give an example of each.",
    "Who painted the Mona Lisa?",
]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def realm_concurrent(llm: Any, prompts: list[list[int]], new: int, gap: float) -> dict[str, Any]:
    from realm_web import SamplingParams

    p = SamplingParams(max_tokens=new, ignore_eos=True)
    t0 = time.perf_counter()

    async def one(i: int) -> tuple[float, float, list[int]]:
        await asyncio.sleep(max(0.0, t0 + i * gap - time.perf_counter()))
        arrive = time.perf_counter()
        first = None
        ids: list[int] = []
        async for d in llm.stream(prompts[i], p):
            if first is None and d.token_ids:
                first = time.perf_counter()
            ids += d.token_ids
        return (first or arrive) - arrive, time.perf_counter(), ids

    res = await asyncio.gather(*(one(i) for i in range(len(prompts))))
    end = max(r[1] for r in res)
    return {"ttft_s": [r[0] for r in res], "total_s": end - t0, "tokens": [r[2] for r in res]}


def realm_alone(llm: Any, prompts: list[list[int]], new: int) -> list[dict[str, Any]]:
    from realm_web import SamplingParams

    out = []
    for ids in prompts:
        t0 = time.perf_counter()
        c = llm.generate(ids, SamplingParams(max_tokens=new, ignore_eos=True))[0]
        out.append({"ttft": c.timings["ttft_s"], "dur": time.perf_counter() - t0, "tokens": c.token_ids})
    return out


def one_after_another(alone: list[dict[str, Any]], gap: float) -> dict[str, Any]:
    """The measured solo runs laid out as a one-request-at-a-time server would serve them."""
    free, ttft = 0.0, []
    for i, a in enumerate(alone):
        start = max(free, i * gap)
        ttft.append(start + a["ttft"] - i * gap)
        free = start + a["dur"]
    return {"ttft_s": ttft, "total_s": free, "tokens": [a["tokens"] for a in alone]}


def summary(r: dict[str, Any], new: int) -> dict[str, Any]:
    n = len(r["tokens"])
    toks = sum(len(t) for t in r["tokens"])
    return {"requests": n, "tokens": toks, "wall_s": round(r["total_s"], 3),
            "agg_tok_s": round(toks / r["total_s"], 1) if r["total_s"] > 0 else 0.0,
            "ttft_p50_ms": round(1e3 * statistics.median(r["ttft_s"]), 1),
            "ttft_p99_ms": round(1e3 * pct(r["ttft_s"], 0.99), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="realm-web export to run (default: int4 on cpu, fp16 on cuda)")
    ap.add_argument("--sizes", default="1,4,16,64")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--gap-ms", type=float, default=None, help="arrival spacing (default 10 on cpu, 2 on cuda)")
    ap.add_argument("--anchors", default="hf,sequential", help="comma list of: sequential, hf, plain, genai")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--inline", action="store_true",
                    help="also measure an engine that runs steps inline in the event loop (step_thread=False)")
    ap.add_argument("--no-graph", action="store_true",
                    help="also measure decode steps without CUDA graphs (the default on cuda replays them)")
    ap.add_argument("--model", default=None, help="realm-web model dir (default: realm-web pull)")
    ap.add_argument("--gguf", default=None, help="the GGUF the anchors load (default: the pulled one)")
    ap.add_argument("--work", default=None, help="where anchors keep their builds")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "batching.json"))
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    dtype = a.dtype or ("fp16" if a.device == "cuda" else "int4")
    gap = (a.gap_ms if a.gap_ms is not None else (2.0 if a.device == "cuda" else 10.0)) / 1e3
    want = set(a.anchors.split(",")) if a.anchors else set()
    threads = a.threads or (None if a.device == "cuda" else 2)

    from realm_web import LLM

    if a.model:
        model_dir = Path(a.model)
    else:
        from realm_web.export.pull import pull

        model_dir = pull()
    work = Path(a.work or tempfile.mkdtemp(prefix="realm-batching-"))
    llm = LLM(model_dir, dtype=dtype, device=a.device, threads=threads, max_slots=max(sizes), max_length=384)
    qs = [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" (question {i})") for i in range(max(sizes))]
    prompts = [llm.encode_prompt(q) for q in qs]
    env = {"device": a.device, "dtype": dtype, "new_tokens": a.new, "gap_ms": gap * 1e3, "threads": threads,
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "prompt_tokens": [len(p) for p in prompts]}
    if a.device == "cuda":
        try:
            import torch

            env["gpu"] = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - informational
            pass
    print(f"realm-web {dtype} on {a.device}; {a.new} new tokens per request, arrivals {gap * 1e3:g} ms apart",
          file=sys.stderr)
    # warm-up (first-run allocations), then each size
    asyncio.run(realm_concurrent(llm, prompts[:2], 4, 0.0))
    rows: dict[str, dict[str, Any]] = {}
    for n in sizes:
        r = asyncio.run(realm_concurrent(llm, prompts[:n], a.new, gap))
        rows[f"realm-web concurrent N={n}"] = {**summary(r, a.new), "_tokens": r["tokens"]}
        print(f"done: realm-web N={n}", file=sys.stderr)
    if "sequential" in want:
        alone = realm_alone(llm, prompts[: max(sizes)], a.new)
        for n in sizes:
            r = one_after_another(alone[:n], gap)
            rows[f"realm-web one after another N={n}"] = {**summary(r, a.new), "_tokens": r["tokens"]}
        print("done: one after another", file=sys.stderr)
    llm.close()
    variants = ([("inline steps", {"step_thread": False})] if a.inline else []) + \
        ([("no cuda graph", {"cuda_graph": False}), ("no cuda graph inline", {"cuda_graph": False, "step_thread": False})]
         if a.no_graph else [])
    for label, opts in variants:
        from realm_web.engines.ort_native import OrtNativeEngine

        try:
            eng = OrtNativeEngine(model_dir, dtype=dtype, device=a.device, threads=threads, max_slots=max(sizes),
                                  max_length=384, **opts)
            var = LLM(engine=eng, device=a.device)
            asyncio.run(realm_concurrent(var, prompts[:2], 4, 0.0))
            for n in sizes:
                r = asyncio.run(realm_concurrent(var, prompts[:n], a.new, gap))
                rows[f"realm-web {label} N={n}"] = {**summary(r, a.new), "_tokens": r["tokens"]}
            var.close()
        except Exception as e:  # noqa: BLE001 - a variant that fails is reported, not fatal
            rows[f"realm-web {label}"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"done: realm-web {label}", file=sys.stderr)
    gguf = Path(a.gguf) if a.gguf else None
    if gguf is None and want & {"hf", "plain", "genai"}:
        from realm_web.export.pull import default_gguf_path

        gguf = default_gguf_path()
    if want & {"hf", "plain", "genai"}:
        assert gguf is not None
        hf = anchors.hf_dir_from_gguf(gguf, work / "hf")
        adt = "fp16" if a.device == "cuda" else "fp32"
        if "hf" in want:
            import torch

            if threads:
                torch.set_num_threads(threads)
            m = anchors.load_hf(hf, a.device, adt)
            anchors.hf_batched(m, prompts[:2], 2)
            for n in sizes:
                rows[f"transformers {adt} static N={n}"] = _anchor(lambda: anchors.hf_batched(m, prompts[:n], a.new), a.new)
            del m
            print("done: transformers", file=sys.stderr)
        if "plain" in want:
            try:
                path = anchors.export_plain(hf, work / f"plain-{adt}", a.device, adt)
                anchors.plain_batched(path, prompts[:2], 2, a.device, threads)
                for n in sizes:
                    rows[f"plain onnx {adt} static N={n}"] = _anchor(
                        lambda: anchors.plain_batched(path, prompts[:n], a.new, a.device, threads), a.new)
            except Exception as e:  # noqa: BLE001 - a failed anchor is reported, not fatal
                rows[f"plain onnx {adt}"] = {"error": f"{type(e).__name__}: {e}"}
            print("done: plain onnx", file=sys.stderr)
        if "genai" in want:
            try:
                gdir = anchors.build_genai(hf, work / f"genai-{adt}", adt, a.device, threads)
                anchors.genai_batched(gdir, prompts[:2], 2)
                for n in sizes:
                    if n > 32:
                        rows[f"onnxruntime-genai {adt} static N={n}"] = {"error": "its generator refuses batch > 32"}
                        continue
                    rows[f"onnxruntime-genai {adt} static N={n}"] = _anchor(
                        lambda: anchors.genai_batched(gdir, prompts[:n], a.new), a.new)
            except Exception as e:  # noqa: BLE001
                rows[f"onnxruntime-genai {adt}"] = {"error": f"{type(e).__name__}: {e}"}
            print("done: genai", file=sys.stderr)
    report(rows, sizes, env, Path(a.out))
    return 0


def _anchor(fn: Any, new: int) -> dict[str, Any]:
    try:
        r = fn()
        return {**summary(r, new), "_tokens": r["tokens"]}
    except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}


def report(rows: dict[str, dict[str, Any]], sizes: list[int], env: dict[str, Any], out: Path) -> None:
    print(f"\nbatching: {env['device']} ({env.get('gpu') or env['cpu']}), realm-web {env['dtype']}, "
          f"{env['new_tokens']} new tokens/request, arrivals {env['gap_ms']:g} ms apart")
    print(f"{'engine':42} {'agg tok/s':>10} {'TTFT p50':>9} {'p99 ms':>8} {'realm/this':>10} {'same':>5}")
    for n in sizes:
        ours = rows.get(f"realm-web concurrent N={n}", {})
        seq = rows.get(f"realm-web one after another N={n}", {})
        for name, r in rows.items():
            if not name.endswith(f"N={n}"):
                continue
            if "error" in r:
                print(f"{name:42} error: {r['error'][:70]}")
                continue
            ratio = ours.get("agg_tok_s", 0) / r["agg_tok_s"] if r.get("agg_tok_s") else 0
            r["realm_ratio"] = round(ratio, 2)
            # realm-web rows are compared with the requests run alone, or else with the default engine's
            ref = (seq.get("_tokens") or (ours.get("_tokens") if r is not ours else None)) \
                if name.startswith("realm-web") else None  # other dtypes differ anyway
            same = "-" if ref is None else ("yes" if r["_tokens"] == ref else
                                            f"{sum(x == y for x, y in zip(r['_tokens'], ref))}/{len(ref)}")
            r["same_tokens_as_one_after_another"] = same
            print(f"{name:42} {r['agg_tok_s']:10.1f} {r['ttft_p50_ms']:9.1f} {r['ttft_p99_ms']:8.1f} "
                  f"{ratio:9.2f}x {same:>5}")
    for name, r in rows.items():
        if "error" in r and "N=" not in name:
            print(f"{name:42} error: {r['error'][:200]}")
    for r in rows.values():
        r.pop("_tokens", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    sys.exit(main())
