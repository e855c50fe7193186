"""Structured outputs: what a JSON schema costs.

1. Mask cost per step: the time the scheduler spends getting a constrained request's token mask
   (realm_web.structured.Matcher.mask) along real outputs, cold (a format seen for the first time:
   each new DFA state walks the vocabulary trie, and the schema's own byte sets split the
   vocabulary once: vocab.Road), and warm (the same format again: lookups),
   median and p99 in ms, plus the matcher's advance per token.
2. Decode tokens/s with and without a JSON schema at batch 1 and 16 (greedy, the same prompts,
   the same run): "vs free" is the ratio to unconstrained decoding.

    .venv/bin/python bench/structured.py [--dtype int4] [--batches 1,16] [--new 64] [--reps 3]
        [--out bench/results/structured_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "city": {"type": "string"}, "email": {"type": "string", "format": "email"},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    "address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["street", "zip"]}},
    "required": ["name", "age", "city", "tags", "address"], "additionalProperties": False}
PROMPTS = ["Describe a person who lives in Paris as JSON.", "Make up a customer record as JSON.",
           "Give me a JSON profile of a software engineer.", "Invent a character for a novel, as JSON."]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def mask_costs(llm: Any, outputs: list[list[int]]) -> dict[str, Any]:
    from realm_web.structured import Constrainer, OutputFormat, Vocabulary

    res: dict[str, Any] = {}
    sch = llm.scheduler
    t0 = time.perf_counter()  # what the first constrained request of a process makes (load-time tables)
    c = Constrainer(Vocabulary.of(sch.tokenizer, sch.constrainer.vocab.size, sorted(sch.eos)))
    c.warm()
    res["precompute_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    # fresh: the first pass meets every state of the schema (and its own byte sets) anew
    for phase in ("cold", "warm"):
        times, adv = [], []
        for ids in outputs:
            m = c.matcher(OutputFormat("json_schema", SCHEMA))
            for t in ids:
                t0 = time.perf_counter()
                m.mask()
                t1 = time.perf_counter()
                ok = m.advance(t)
                adv.append(time.perf_counter() - t1)
                times.append(t1 - t0)
                if not ok or m.final:
                    break
        res[phase] = {"steps": len(times), "mask_median_ms": round(statistics.median(times) * 1e3, 4),
                      "mask_mean_ms": round(statistics.fmean(times) * 1e3, 4),
                      "mask_p99_ms": round(pct(times, 0.99) * 1e3, 4), "mask_max_ms": round(max(times) * 1e3, 3),
                      "advance_median_ms": round(statistics.median(adv) * 1e3, 4)}
    res["dfa_states"] = len(c.grammar(OutputFormat("json_schema", SCHEMA)).dfa.sets)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "structured_cpu.json"))
    a = ap.parse_args()
    from realm_web import LLM, SamplingParams

    batches = [int(b) for b in a.batches.split(",")]
    llm = LLM(dtype=a.dtype, max_slots=max(batches), max_length=512)
    llm.generate(PROMPTS[0], max_tokens=4)  # warm the runtime
    rows: list[dict[str, Any]] = []
    outputs: list[list[int]] = []
    for b in batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
        rates: dict[str, list[float]] = {"free": [], "json_schema": []}
        for _ in range(a.reps):  # round robin: both configurations see the same machine state
            for kind in rates:
                p = SamplingParams(max_tokens=a.new, **({"json_schema": SCHEMA} if kind == "json_schema" else {}))
                t0 = time.perf_counter()
                cs = llm.generate(prompts, p)
                dt = time.perf_counter() - t0
                rates[kind].append(sum(len(c.token_ids) for c in cs) / dt)
                if kind == "json_schema" and b == batches[0]:
                    outputs = [c.token_ids for c in cs]
                    for c in cs:
                        if c.finish_reason == "stop":
                            json.loads(c.text)
        free = statistics.median(rates["free"])
        js = statistics.median(rates["json_schema"])
        rows.append({"batch": b, "free_tok_s": round(free, 1), "json_schema_tok_s": round(js, 1),
                     "vs_free": round(js / free, 3)})
    masks = mask_costs(llm, outputs * 2)
    print(f"{'batch':>5} {'free tok/s':>11} {'schema tok/s':>13} {'vs free':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['free_tok_s']:>11} {r['json_schema_tok_s']:>13} {r['vs_free']:>8}")
    print(f"\nmask per step ({masks['dfa_states']} DFA states reached; vocabulary tables made once per "
          f"process in {masks['precompute_ms']} ms):")
    for phase in ("cold", "warm"):
        m = masks[phase]
        print(f"  {phase}: median {m['mask_median_ms']} ms, mean {m['mask_mean_ms']} ms, p99 {m['mask_p99_ms']} ms, max {m['mask_max_ms']} ms "
              f"over {m['steps']} steps; advance {m['advance_median_ms']} ms")
    out = {"bench": "structured", "dtype": a.dtype, "new_tokens": a.new, "reps": a.reps, "machine": platform.machine(),
           "cpus": os.cpu_count(), "decode": rows, "mask": masks,
           "command": "python bench/structured.py " + " ".join(sys.argv[1:])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
