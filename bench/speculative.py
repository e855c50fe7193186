"""Speculative decoding: tokens/s of realm-web's LLM with speculation against plain decoding, in
the same run, per workload and batch size, with the acceptance and the tokens per verify step.

Methods (--methods): ngram (prompt lookup) and draft (one of the model's own exports drafting for
the --dtype target: int8, else int4, see speculative.default_draft_dtype; --draft-dtype another).

Workloads (--workloads): grounded (repeat / edit a given text, summarize a passage, extract
fields), code (edit a given function), chat (open questions, nothing to look up). Batch 1 runs
each prompt alone; batch B runs B prompts of the workload together. Greedy, --new tokens each
(ignore_eos off: a request ends where the model ends it; tokens/s counts what it made).
Configurations run round robin, --reps rounds, medians; "vs plain" is the ratio to plain
decoding of the same workload and batch in the same run. The outputs of every configuration are
compared with plain decoding's ("identical" column).

    .venv/bin/python bench/speculative.py [--dtype fp32] [--batches 1,16] [--new 96] [--reps 3]
        [--methods ngram,draft] [--k 4] [--out bench/results/speculative_cpu.json]
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

PASSAGE = ("The city council met on Tuesday evening to review the annual budget. After a long debate it approved "
           "funding for the new public library on Elm Street, postponed the road repairs on the east side until "
           "next spring, and asked the treasurer, Maria Lopez, to present a revised revenue forecast by the end of "
           "March. Residents who spoke at the meeting mostly supported the library but worried about traffic.")
CODE = '''def total_price(items, tax_rate):
    total = 0
    for item in items:
        total = total + item["price"] * item["quantity"]
    total = total + total * tax_rate
    return total
'''
WORKLOADS = {
    "grounded": [f"Repeat the following text exactly, word for word:\n\n{PASSAGE}",
                 f"Rewrite this text, replacing 'Tuesday' with 'Monday' and changing nothing else:\n\n{PASSAGE}",
                 f"Summarize this passage in two sentences:\n\n{PASSAGE}",
                 f"From this text, extract the date, the people named and each decision:\n\n{PASSAGE}"],
    "code": [f"Rename the variable total to subtotal in this function and return the whole function:\n\n{CODE}",
             f"Add a docstring to this function and return the whole function:\n\n{CODE}",
             f"Add type hints to this function and return the whole function:\n\n{CODE}",
             f"Rewrite this function to use sum() and return it:\n\n{CODE}"],
    "chat": ["Tell me about the history of the bicycle.", "What are some good habits for staying healthy?",
             "Write a short story about a dragon who learns to bake.", "Explain why the sky is blue."],
}


def say(msg: str) -> None:
    print(f"[bench/speculative] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--workloads", default="grounded,code,chat")
    ap.add_argument("--methods", default="ngram")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--draft-dtype", default=None)
    ap.add_argument("--new", type=int, default=96)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "speculative_cpu.json"))
    a = ap.parse_args()

    from realm_web import LLM, SamplingParams
    from realm_web.paths import default_model_dir

    model = Path(a.model) if a.model else default_model_dir()
    batches = [int(b) for b in a.batches.split(",")]
    workloads = a.workloads.split(",")
    configs: dict[str, Any] = {"plain": None}
    for m in a.methods.split(","):
        if m == "plain2":  # a second plain LLM: the noise between two identical configurations
            configs[m] = None
            continue
        configs[m] = {"method": m, "num_speculative_tokens": a.k}
        if m == "draft" and a.draft_dtype:
            configs[m]["draft_dtype"] = a.draft_dtype
    slots = max(batches)
    # a draft model's engine puts onnxruntime on one shared thread pool (ort_native.py): made first,
    # so that every configuration runs on the same kind of pool
    order = sorted(configs, key=lambda n: n != "draft")
    llms = {name: LLM(model, dtype=a.dtype, device=a.device, threads=a.threads, max_slots=slots, max_length=1024,
                      speculative=configs[name]) for name in order}
    llms = {name: llms[name] for name in configs}
    params = SamplingParams(max_tokens=a.new)

    def run(name: str, texts: list[str]) -> tuple[float, int, list[list[int]], dict[str, int]]:
        llm = llms[name]
        before = dict(llm.scheduler.spec_stats)
        t0 = time.perf_counter()
        cs = llm.generate(texts, params)
        dt = time.perf_counter() - t0
        after = llm.scheduler.spec_stats
        return dt, sum(len(c.token_ids) for c in cs), [c.token_ids for c in cs], \
            {k: after[k] - before[k] for k in after}

    jobs = []  # (workload, batch, list of prompt groups)
    for w in workloads:
        texts = WORKLOADS[w]
        for b in batches:
            groups = [[t] for t in texts] if b == 1 else [[texts[i % len(texts)] for i in range(b)]]
            jobs.append((w, b, groups))
    for name in configs:  # warm every configuration once (first-run costs)
        run(name, WORKLOADS["chat"][:1])
    times: dict[tuple[str, int, str], list[float]] = {}
    toks: dict[tuple[str, int, str], int] = {}
    outs: dict[tuple[str, int, str], list[list[int]]] = {}
    stats: dict[tuple[str, int, str], dict[str, int]] = {}
    for rep in range(a.reps):
        for w, b, groups in jobs:
            for name in configs:
                key = (w, b, name)
                dt_sum, n_sum, ids, st = 0.0, 0, [], {}  # type: ignore[var-annotated]
                for g in groups:
                    dt, n, got, s = run(name, g)
                    dt_sum += dt
                    n_sum += n
                    ids += got
                    st = {k: st.get(k, 0) + v for k, v in s.items()}
                times.setdefault(key, []).append(dt_sum)
                toks[key], outs[key], stats[key] = n_sum, ids, st
        say(f"round {rep + 1}/{a.reps} done")
    rows: dict[str, Any] = {}
    for w, b, _ in jobs:
        base = toks[(w, b, "plain")] / statistics.median(times[(w, b, "plain")])
        for name in configs:
            key = (w, b, name)
            rate = toks[key] / statistics.median(times[key])
            st = stats[key]
            same = sum(x == y for x, y in zip(outs[key], outs[(w, b, "plain")]))
            row = {"tok_s": round(rate, 1), "vs_plain": round(rate / base, 3), "tokens": toks[key],
                   "identical": outs[key] == outs[(w, b, "plain")], "identical_outputs": f"{same}/{len(outs[key])}"}
            if configs[name] is not None:
                row.update(verify_steps=st["verify_steps"], draft_tokens=st["draft_tokens"],
                           acceptance=round(st["accepted_tokens"] / st["draft_tokens"], 3) if st["draft_tokens"] else None,
                           mean_accepted_length=round(st["emitted_tokens"] / st["verify_steps"], 2) if st["verify_steps"] else None)
            rows[f"{w}, batch {b}, {name}"] = row
    import onnxruntime

    env = {"device": a.device, "dtype": a.dtype, "k": a.k, "new": a.new, "reps": a.reps, "batches": batches,
           "model": str(model), "threads": a.threads or len(os.sched_getaffinity(0)), "python": platform.python_version(),
           "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "overhead_fit": {n: round(l.scheduler.cost.overhead, 2) for n, l in llms.items() if n != "plain"},
           "draft_cost": {n: round(l.scheduler.cost.draft, 2) for n, l in llms.items() if n == "draft"},
           "draft_dtype": {n: l.engine.draft.engine.variant.dtype for n, l in llms.items()
                           if getattr(l.engine, "draft", None) is not None}}
    out = {"env": env, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"{'configuration':34s} {'tok/s':>8s} {'vs plain':>8s} {'accept':>7s} {'tok/verify':>10s} {'identical':>9s}")
    for k, r in rows.items():
        print(f"{k:34s} {r['tok_s']:8.1f} {r['vs_plain']:8.3f} {str(r.get('acceptance', '')):>7s} "
              f"{str(r.get('mean_accepted_length', '')):>10s} {r['identical_outputs']:>9s}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
