"""Quick functional check of an engine on a device (used on the lent GPU before benchmarking):
the Paris answer, greedy / seeded tokens alone vs among 32 staggered requests, and the step
contract with hand-made plans (samples at several positions vs step by step, a rollback, a KV
copy between slots).

    python bench/engine_check.py --model DIR --device cuda --dtype fp16
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from batching_workload import run_staggered, workload  # noqa: E402

from realm_web import LLM, SamplingParams  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-graph", action="store_true", help="no CUDA graphs (the default on cuda replays decode steps)")
    a = ap.parse_args()
    t = time.perf_counter()
    llm = LLM(a.model, device=a.device, dtype=a.dtype, max_slots=32, max_length=256, max_tokens_per_step=256,
              cuda_graph=False if a.no_graph else None)
    res: dict[str, object] = {"load_s": round(time.perf_counter() - t, 2)}
    c = llm.generate("What is the capital of France?", max_tokens=24)[0]
    res["paris"] = c.text
    prompts, max_tokens, arrive = workload()
    params = [SamplingParams(max_tokens=m) for m in max_tokens]
    alone = [llm.generate(p, q)[0].token_ids for p, q in zip(prompts, params)]
    batched = run_staggered(llm, prompts, params, arrive)
    res["greedy_same"] = sum(batched[i] == alone[i] for i in range(len(prompts)))
    sp = [SamplingParams(max_tokens=m + 8, temperature=0.9, top_p=0.95, seed=100 + i) for i, m in enumerate(max_tokens)]
    alone_s = [llm.generate(p, q)[0].token_ids for p, q in zip(prompts, sp)]
    batched_s = run_staggered(llm, prompts, sp, arrive)
    res["seeded_same"] = sum(batched_s[i] == alone_s[i] for i in range(len(prompts)))
    res["of"] = len(prompts)
    res.update(contract(llm))
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0 if "Paris" in c.text and res["greedy_same"] == len(prompts) else 1


def contract(llm: LLM) -> dict[str, object]:
    """The plan's fields on this engine, on slots the scheduler is not using (it is idle here)."""
    from realm_web.step import KVCopy, NewSeq, SamplingSpec, SeqStep, StepPlan

    eng, spec = llm.engine, SamplingSpec()
    prompt = llm.encode_prompt("The quick brown fox jumps over the lazy dog. The quick brown", raw=True)
    g = llm.generate(prompt, max_tokens=8, ignore_eos=True)[0].token_ids  # step by step
    n = len(prompt)

    def run(*seqs: SeqStep, **kw: object) -> dict[int, list[int]]:
        return eng.run_sync(StepPlan(seqs=list(seqs), **kw)).tokens  # type: ignore[arg-type]

    run(SeqStep(-1, 0, 0, prompt, 1), new_seqs=[NewSeq(-1, 0, spec)])
    verify = run(SeqStep(-1, 0, n, g[:7], 7))[-1]  # samples at 7 positions in one step
    back = run(SeqStep(-1, 0, n + 3, g[3:4], 1))[-1]  # rolled back to n + 3
    copied = run(SeqStep(-2, 1, n - 1, prompt[-1:], 1), new_seqs=[NewSeq(-2, 1, spec)], copies=[KVCopy(0, 1, n - 1)])[-2]
    run(released=[-1, -2])
    return {"verify_same": sum(a == b for a, b in zip(verify, g[1:8])), "verify_of": 7,
            "rollback_same": back == g[4:5], "copy_same": copied == g[:1]}


if __name__ == "__main__":
    sys.exit(main())
