"""Prefix caching on a multi-turn chat: time to first token per turn, with and without it, same run.

Each turn sends the whole conversation so far (the chat template over every message, as a chat
client does); with prefix caching the turn's slot still holds the conversation up to the last
answer, so only the new message is computed. Greedy, the same turns for both; rows alternate
per repetition so both see the same machine state. Reports TTFT per turn (median over --reps),
the prompt tokens the cache gave, and the ratio without / with.

    .venv/bin/python bench/prefix.py [--dtype int4] [--turns 8] [--new 48] [--reps 3]
        [--out bench/results/prefix_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TURNS = ["Tell me about Paris in three sentences.", "What about its museums?", "Which one should I visit first?",
         "How long does a visit take?", "What else is nearby?", "Give me a one-day plan.",
         "Now make it for a rainy day.", "Summarize the plan in one sentence.", "Thanks! Any food tips?",
         "And a good dessert?"]


def chat(llm: Any, turns: list[str], new: int) -> tuple[list[float], list[list[int]], list[int]]:
    """TTFT per turn (seconds), the answers' token ids and the prompts' lengths."""
    from realm_web import SamplingParams

    msgs: list[dict[str, str]] = []
    ttfts, answers, lengths = [], [], []
    for t in turns:
        msgs.append({"role": "user", "content": t})
        ids = llm.encode_prompt(msgs)
        lengths.append(len(ids))
        c = llm.generate(ids, SamplingParams(max_tokens=new, temperature=0))[0]
        ttfts.append(c.timings["ttft_s"])
        got = c.token_ids
        answers.append(got)
        msgs.append({"role": "assistant", "content": llm.decode(got)})
    return ttfts, answers, lengths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "prefix_cpu.json"))
    a = ap.parse_args()
    from realm_web import LLM

    turns = TURNS[: a.turns]
    runs: dict[str, list[list[float]]] = {"off": [], "on": []}
    answers: dict[str, list[list[int]]] = {}
    lengths: list[int] = []
    stats: dict[str, int] = {}
    for _ in range(a.reps):  # a fresh engine per conversation: the first turn finds nothing cached
        for name, on in (("off", False), ("on", True)):
            llm = LLM(dtype=a.dtype, max_slots=2, max_length=2048, prefix_caching=on)
            llm.generate("Hello", max_tokens=2)  # warm the runtime (a different prompt: nothing to reuse)
            t, ans, lengths = chat(llm, turns, a.new)
            runs[name].append(t)
            answers[name] = ans
            if on:
                stats = dict(llm.scheduler.prefix_stats)
            llm.close()
    rows = []
    for i, turn in enumerate(turns):
        off = statistics.median(r[i] for r in runs["off"])
        on = statistics.median(r[i] for r in runs["on"])
        prompt = lengths[i]
        rows.append({"turn": i + 1, "prompt_tokens": prompt, "ttft_off_ms": round(off * 1e3, 1),
                     "ttft_on_ms": round(on * 1e3, 1), "x": round(off / on, 2)})
    same = [x == y for x, y in zip(answers["off"], answers["on"])]
    print(f"{'turn':>4} {'prompt':>7} {'TTFT off ms':>12} {'TTFT on ms':>11} {'off/on':>7}")
    for r in rows:
        print(f"{r['turn']:>4} {r['prompt_tokens']:>7} {r['ttft_off_ms']:>12} {r['ttft_on_ms']:>11} {r['x']:>7}")
    print(f"cache: {stats}; answers equal with and without: {sum(same)}/{len(same)}")
    out = {"bench": "prefix", "dtype": a.dtype, "turns": a.turns, "new_tokens": a.new, "reps": a.reps,
           "machine": platform.machine(), "cpus": os.cpu_count(), "rows": rows, "prefix_stats": stats,
           "answers_equal": same, "command": "python bench/prefix.py " + " ".join(sys.argv[1:])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
