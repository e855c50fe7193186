"""What padding lone rows costs (realm_web/engines/ort_native.py "Lone rows").

Batch 1, greedy, the chat prompt "What is the capital of France?", 128 new tokens (EOS ignored),
2 threads: decode tokens/s of the native engine with lone rows run as they are (the anchor) and
padded with an idle neighbour row (forced, whatever this CPU's check says), per dtype, the median
of --reps runs after a warm-up; the ratio padded / plain; and what the load-time check finds on
this CPU (on x86 without AVX-512 the int4 export's lone rows differ, so the engine pads them by
default there and the padded row is what users get).

    .venv/bin/python bench/lone_rows.py [--reps 3] [--dtypes int4,fp32] [--out bench/results/lone_rows.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

PROMPT = "What is the capital of France?"
NEW = 128
THREADS = 2


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return sorted(f for f in line.split(":", 1)[-1].split() if f.startswith(("avx", "amx")))


def decode_rate(model_dir: Path, dtype: str, pad: bool, reps: int) -> dict[str, Any]:
    from realm_web import LLM, SamplingParams
    from realm_web.engines.ort_native import OrtNativeEngine

    eng = OrtNativeEngine(model_dir, dtype=dtype, threads=THREADS, max_slots=2, max_length=256, pad_lone_rows=pad)
    llm = LLM(engine=eng)
    p = SamplingParams(max_tokens=NEW, ignore_eos=True)
    llm.generate(PROMPT, p)  # warm-up
    rates, ids = [], []
    for _ in range(reps):
        c = llm.generate(PROMPT, p)[0]
        rates.append((NEW - 1) / c.timings["decode_s"])
        ids = c.token_ids
    llm.close()
    return {"decode_tok_s": round(statistics.median(rates), 1), "all": [round(r, 1) for r in rates], "tokens": ids}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtypes", default="int4,fp32")
    ap.add_argument("--out", default="bench/results/lone_rows.json")
    a = ap.parse_args()
    from realm_web.engines.ort_native import OrtNativeEngine, lone_rows_differ
    from realm_web.paths import default_model_dir

    model = Path(a.model) if a.model else default_model_dir()
    rows = []
    print(f"{'dtype':6} {'lone rows differ':>16} {'plain tok/s':>12} {'padded tok/s':>13} {'padded/plain':>13} {'same ids':>9}")
    for dtype in a.dtypes.split(","):
        probe = OrtNativeEngine(model, dtype=dtype, threads=THREADS, max_slots=1, max_length=64, pad_lone_rows=False)
        differ = lone_rows_differ(probe.session, probe.manifest, probe.kv_dtype, probe.pad_id)
        probe.close()
        plain = decode_rate(model, dtype, False, a.reps)
        padded = decode_rate(model, dtype, True, a.reps)
        ratio = round(padded["decode_tok_s"] / plain["decode_tok_s"], 3)
        same = plain["tokens"] == padded["tokens"]
        rows.append({"dtype": dtype, "lone_rows_differ": differ, "plain": plain, "padded": padded,
                     "padded_over_plain": ratio, "same_ids": same})
        print(f"{dtype:6} {str(differ):>16} {plain['decode_tok_s']:>12} {padded['decode_tok_s']:>13} {ratio:>13} {str(same):>9}")
    out = {"bench": "lone_rows", "prompt": PROMPT, "new_tokens": NEW, "threads": THREADS, "reps": a.reps,
           "machine": {"cpu": platform.processor() or platform.machine(), "flags": cpu_flags()}, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
