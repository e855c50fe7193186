"""Do int4 requests decode the same alone and among others on this CPU? With lone-row padding as
the engine picks it (`auto`) or turned off (`off`). Meant for CPUs where one row computes otherwise
than a batch, which any x86 machine can emulate (apt-get install qemu-user):

    QEMU_CPU=Haswell qemu-x86_64 .venv/bin/python tools/lone_rows_check.py off   # 3/8 equal at stop 28
    QEMU_CPU=Haswell qemu-x86_64 .venv/bin/python tools/lone_rows_check.py auto  # 8/8

(a few minutes each, emulated). Prints the engine's choice and how many requests matched.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from batching_workload import run_staggered, workload  # noqa: E402

from realm_web import LLM, SamplingParams  # noqa: E402
from realm_web.engines.ort_native import OrtNativeEngine  # noqa: E402
from realm_web.paths import default_model_dir  # noqa: E402


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "auto"
    if mode not in ("auto", "off"):
        sys.exit("usage: lone_rows_check.py [auto|off] [requests]")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    t = time.time()
    eng = OrtNativeEngine(default_model_dir(), dtype="int4", max_slots=8, max_length=256,
                          pad_lone_rows=None if mode == "auto" else False)
    llm = LLM(engine=eng, max_tokens_per_step=256)
    prompts, max_tokens, arrive = workload(n)
    params = [SamplingParams(max_tokens=m) for m in max_tokens]
    alone = [llm.generate(p, q)[0].token_ids for p, q in zip(prompts, params)]
    batched = run_staggered(llm, prompts, params, [a % 6 for a in arrive])
    same = sum(batched[i] == alone[i] for i in range(n))
    print(f"pad_lone_rows={eng.pad_lone_rows}: {same}/{n} requests equal alone and batched ({time.time() - t:.0f} s)")
    sys.exit(0 if same == n else 1)


if __name__ == "__main__":
    main()
