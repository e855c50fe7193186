"""Where a step's time goes: times the native engine's forward for prefill and decode shapes,
and (with --ort-profile) writes onnxruntime's per-op profile of one of each, summarized by op.

    python bench/step_profile.py --model DIR [--device cuda] [--dtype fp16] [--ort-profile]
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timeit(fn, reps: int = 10) -> float:  # type: ignore[no-untyped-def]
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--ort-profile", action="store_true")
    ap.add_argument("--first-runs", action="store_true", help="time the first run of new shapes")
    ap.add_argument("--no-graph", action="store_true", help="no CUDA graphs (on cuda, decode steps in run_sync replay them by default)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from realm_web.engines.ort_native import OrtNativeEngine
    from realm_web.step import NewSeq, SamplingSpec, SeqStep, StepPlan

    eng = OrtNativeEngine(a.model, device=a.device, dtype=a.dtype, max_slots=64, max_length=384,
                         cuda_graph=False if a.no_graph else None)
    if eng.cuda_graph:
        print("warm-up shapes:", eng.warmup(64))
    res: dict[str, float] = {}

    def fwd(rows: int, width: int, start: int) -> None:
        ids = np.full((rows, width), 100, np.int64)
        tot = np.full(rows, start + width, np.int64)
        eng._forward(0, ids, tot, np.full((rows, 1), width - 1, np.int64))

    eng.run_sync(StepPlan(seqs=[], new_seqs=[NewSeq(i, i, SamplingSpec()) for i in range(64)]))

    def prime(rows: int, start: int) -> None:  # slots 0..rows-1 hold `start` tokens
        if start:
            eng.run_sync(StepPlan(seqs=[SeqStep(seq_id=i, slot=i, start=0, tokens=[100] * start) for i in range(rows)]))

    def step(rows: int, width: int, start: int) -> None:  # each run rolls the rows back to `start`
        seqs = [SeqStep(seq_id=i, slot=i, start=start, tokens=[100] * width, num_samples=1) for i in range(rows)]
        eng.run_sync(StepPlan(seqs=seqs))

    for rows, width, start in ((1, 40, 0), (16, 40, 0), (1, 1, 40), (16, 1, 40), (64, 1, 40), (1, 1, 300)):
        prime(rows, start)
        res[f"forward rows={rows} width={width} past={start} ms"] = round(timeit(lambda: fwd(rows, width, start)), 3)
        res[f"run_sync rows={rows} width={width} past={start} ms"] = round(timeit(lambda: step(rows, width, start)), 3)
    for k, v in res.items():
        print(f"{k:45} {v:8.3f}")
    if a.first_runs:
        import onnxruntime as ort

        for label, mem_pattern, arena in (("default", True, None), ("no mem pattern", False, None),
                                          ("no mem pattern, arena same-as-requested", False, "kSameAsRequested")):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.enable_mem_pattern = mem_pattern
            opts = {"arena_extend_strategy": arena} if arena else {}
            prov = [("CUDAExecutionProvider", opts), "CPUExecutionProvider"] if a.device == "cuda" else ["CPUExecutionProvider"]
            eng.session = ort.InferenceSession(str(Path(a.model, eng.variant.file)), so, providers=prov)
            eng.binding = eng.session.io_binding()
            eng._span = None
            times = []
            for rows, width, start in ((1, 30, 0), (1, 30, 0), (1, 37, 0), (1, 64, 0), (1, 64, 0), (2, 30, 0),
                                       (1, 31, 0), (1, 1, 30), (2, 1, 30), (3, 1, 30), (3, 1, 31), (4, 1, 31),
                                       (8, 1, 40), (8, 1, 41), (1, 30, 0), (1, 31, 0), (1, 45, 0)):
                t = time.perf_counter()
                fwd(rows, width, start)
                times.append(f"{rows}x{width}@{start}:{(time.perf_counter() - t) * 1e3:.1f}")
            print(f"first runs ({label}):", " ".join(times))
    if a.ort_profile:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tempfile.gettempdir()) / "realm_step_profile")
        so.log_severity_level = 3
        prov = ["CUDAExecutionProvider", "CPUExecutionProvider"] if a.device == "cuda" else ["CPUExecutionProvider"]
        eng.session = ort.InferenceSession(str(Path(a.model, eng.variant.file)), so, providers=prov)
        eng.binding = eng.session.io_binding()
        eng._span = None
        for _ in range(3):
            fwd(1, 40, 0)
        for _ in range(3):
            fwd(1, 1, 40)
        prof = eng.session.end_profiling()
        ev = json.load(open(prof))
        by: dict[str, float] = collections.defaultdict(float)
        runs = [e for e in ev if e.get("name") == "model_run"]
        for e in ev:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                by[(e["args"].get("op_name", "?"), e["args"].get("provider", "?"))] += e["dur"] / 1e3  # type: ignore[index]
        print("model_run ms:", [round(r["dur"] / 1e3, 3) for r in runs])
        print("op time over 3 prefills (40) + 3 decodes, ms:")
        for (op, p), t in sorted(by.items(), key=lambda x: -x[1])[:15]:
            print(f"  {op:36} {p:24} {t:8.3f}")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
