"""CPU decode benchmark: realm-web (fp32/int8/int4) against transformers and onnxruntime-genai.

Batch 1, greedy, the 37-token chat prompt "What is the capital of France?", 128 new tokens
(EOS ignored so every engine makes all 128), 2 threads, same weights (the default GGUF), one run
on one machine. Reports time to first token (prefill + first sample) and decode tokens/s
(127 tokens after the first / their time), the median of --reps runs after a warm-up, and
the ratio of each realm-web row to the onnxruntime-genai row of the same precision.

    .venv/bin/python bench/cpu_decode.py [--reps 3] [--skip-anchors] [--out bench/results/cpu_decode.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))
from anchors import build_genai as _build_genai  # noqa: E402
from anchors import genai_batched, hf_dir_from_gguf  # noqa: E402

PROMPT = "What is the capital of France?"
NEW = 128
THREADS = 2


def measure(run: Callable[[], tuple[float, float, list[int]]], reps: int) -> dict[str, Any]:
    run()  # warm-up
    ttfts, rates, ids = [], [], []
    for _ in range(reps):
        ttft, decode_s, ids = run()
        ttfts.append(ttft)
        rates.append((NEW - 1) / decode_s)
    return {"ttft_s": round(statistics.median(ttfts), 4), "decode_tok_s": round(statistics.median(rates), 1),
            "decode_tok_s_all": [round(r, 1) for r in rates], "tokens": ids}


def bench_realm(model_dir: Path, dtype: str, reps: int) -> dict[str, Any]:
    from realm_web import LLM, SamplingParams

    llm = LLM(model_dir, dtype=dtype, threads=THREADS, max_length=256)
    p = SamplingParams(max_tokens=NEW, ignore_eos=True)

    def run() -> tuple[float, float, list[int]]:
        c = llm.generate(PROMPT, p)[0]
        return c.timings["ttft_s"], c.timings["decode_s"], c.token_ids

    r = measure(run, reps)
    r["text"] = llm.tokenizer.decode(r["tokens"][:16])
    r["file_mb"] = round(llm.manifest.variants[dtype].bytes / 1e6, 1)
    return r


def bench_transformers(gguf: Path, ids: list[int], reps: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    x = torch.tensor([ids])

    def run() -> tuple[float, float, list[int]]:
        with torch.no_grad():
            t0 = time.perf_counter()
            m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=1, do_sample=False, pad_token_id=2)
            t1 = time.perf_counter()
            out = m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW, min_new_tokens=NEW,
                             do_sample=False, pad_token_id=2)
            t2 = time.perf_counter()
        ttft = t1 - t0
        return ttft, (t2 - t1) - ttft, out[0, len(ids):].tolist()

    return measure(run, reps)


def bench_genai(model: Path, ids: list[int], reps: int) -> dict[str, Any]:
    import onnxruntime_genai as og

    m = og.Model(str(model))

    def run() -> tuple[float, float, list[int]]:
        r = genai_batched(m, [ids], NEW)
        return r["ttft_s"][0], r["total_s"], r["tokens"][0]

    return measure(run, reps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-anchors", action="store_true", help="realm-web rows only")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_decode.json"))
    ap.add_argument("--work", default=None, help="where to keep anchor builds (default: a temp dir)")
    a = ap.parse_args()

    from realm_web.export import export_model
    from realm_web.export.pull import default_gguf_path, pull

    model_dir = pull()
    gguf = default_gguf_path()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="realm-bench-"))
    int8_dir = work / "realm-int8"
    if not (int8_dir / "realm.json").exists():
        export_model(gguf, int8_dir, ["int8"], progress=None)
    rows: dict[str, dict[str, Any]] = {}
    for dtype in ("fp32", "int8", "int4"):
        rows[f"realm-web {dtype}"] = bench_realm(int8_dir if dtype == "int8" else model_dir, dtype, a.reps)
        print(f"done: realm-web {dtype}", file=sys.stderr)
    if not a.skip_anchors:
        from realm_web import LLM

        ids = LLM(model_dir, dtype="int4", max_length=64).encode_prompt(PROMPT)
        rows["transformers fp32"] = bench_transformers(gguf, ids, a.reps)
        print("done: transformers", file=sys.stderr)
        hf = hf_dir_from_gguf(gguf, work / "hf")
        for prec in ("fp32", "int8", "int4"):
            try:
                rows[f"onnxruntime-genai {prec}"] = bench_genai(_build_genai(hf, work / f"genai-{prec}", prec, "cpu", THREADS), ids, a.reps)
            except Exception as e:  # noqa: BLE001 - an anchor that cannot be built is reported, not fatal
                rows[f"onnxruntime-genai {prec}"] = {"error": f"{type(e).__name__}: {e}"}
            print(f"done: genai {prec}", file=sys.stderr)
    ref = rows.get("realm-web fp32", {}).get("tokens")

    def agree(tokens: list[int]) -> str:
        """Greedy tokens equal to realm-web fp32 before its first EOS (engines differ from there:
        the anchors suppress EOS to force 128 tokens, ours samples it and goes on)."""
        n = next((i for i, t in enumerate(ref or []) if t == 2), NEW)
        same = sum(1 for _ in __import__("itertools").takewhile(lambda p: p[0] == p[1], zip(tokens, (ref or [])[:n])))
        return "yes" if same == n else f"{same}/{n}"

    print(f"\nCPU decode, batch 1, greedy, {NEW} new tokens, {THREADS} threads ({platform.processor() or platform.machine()})")
    print(f"{'engine':28} {'TTFT ms':>8} {'decode tok/s':>13} {'vs genai':>9} {'= fp32 before EOS':>18}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:28} error: {r['error'][:60]}")
            continue
        prec = name.split()[-1]
        anchor = rows.get(f"onnxruntime-genai {prec}", {})
        ratio = f"{r['decode_tok_s'] / anchor['decode_tok_s']:.2f}x" if name.startswith("realm") and "decode_tok_s" in anchor else ""
        same = agree(r["tokens"])
        r["ratio_vs_genai"] = ratio
        print(f"{name:28} {r['ttft_s'] * 1e3:8.1f} {r['decode_tok_s']:13.1f} {ratio:>9} {same:>18}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"prompt": PROMPT, "new_tokens": NEW, "threads": THREADS, "cpu_count": os.cpu_count(),
                               "rows": rows}, indent=1))
    print(f"\nwrote {out}")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
