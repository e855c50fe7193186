"""Which per-row LoRA form to export: decode steps of the default model with LoRA tables, each
form against the graph without LoRA, in one run.

Forms (realm_web/export/graph.py, LoraLayout): "gather" (each row gathers its adapter's A and B,
then batched matmuls: weights move per row), "masked" (every row multiplies by all slots' A,
other slots' columns masked to zero, one matmul by B: no weights move, compute grows with the
slots) and "grouped" (rows grouped by adapter through an index, one batched matmul per group
over the adapters in use, bound as a contiguous range of the table: no weights move, each row
computed for its own adapter only). A decode step of --rows rows at --past positions, all seven
targets, --slots table entries (entry 0 = no adapter), rows spread over L distinct adapters.
Every configuration's session is made first, then steps are timed round robin (drift and other
load hit every row alike), medians of --reps.

    .venv/bin/python bench/lora_forms.py [--dtype int4] [--rows 16] [--ranks 8,16] [--device cpu|cuda [--cuda-graph]]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(work: Path, dtype: str, form: str | None, rank: int, slots: int, max_length: int) -> Path:
    from realm_web.export.graph import LORA_GROUPS, LoraLayout, build_decoder
    from realm_web.export.load import load_source
    from realm_web.export.pull import default_gguf_path

    out = work / f"{dtype}-{form or 'base'}-r{rank}-s{slots}.onnx"
    if not out.exists():
        src = load_source(default_gguf_path())
        mult = {"qkv": 3, "o": 1, "gate_up": 2, "down": 1}
        lay = LoraLayout(form, slots, {g: mult[g] * rank for g in LORA_GROUPS}) if form else None
        model = build_decoder(src.config, src.weights, dtype, max_length, lora=lay)
        out.write_bytes(model.SerializeToString())
        print(f"built {out.name}", file=sys.stderr)
    return out


def runner(path: Path, a: Any, lora_rows: list[int] | None, threads: int) -> Any:
    """A function that runs one decode step: `rows` rows at `past` positions (KV bound in place)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # many sessions, one machine
    cuda = ("CUDAExecutionProvider", {"device_id": "0", **({"enable_cuda_graph": "1"} if a.cuda_graph else {})})
    providers = [cuda, "CPUExecutionProvider"] if a.device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=providers)
    graph = onnx.load(str(path), load_external_data=False).graph
    ins = {i.name: i for i in graph.input}
    ft = np.float16 if a.dtype == "fp16" else np.float32
    dev = "cuda" if a.device == "cuda" else "cpu"
    B, L, P = a.rows, a.max_length, a.past
    kv = [ort.OrtValue.ortvalue_from_numpy(np.zeros((B, 3, L, 64), ft), dev, 0) for _ in range(60)]
    bnd = sess.io_binding()
    rng = np.random.default_rng(0)
    keep = []
    for n, name in enumerate([f"past_key_values.{i}.{k}" for i in range(30) for k in ("key", "value")]):
        bnd.bind_ortvalue_input(name, kv[n])
        bnd.bind_ortvalue_output(name.replace("past_key_values", "present"), kv[n])
    feeds = {"input_ids": np.full((B, 1), 100, np.int64),
             "attention_mask": np.ones((B, P + 1), np.int64), "logits_index": np.zeros((B, 1), np.int64)}
    entries = a.slots
    if "lora_order" in ins:  # rows grouped by the adapters in use (table entries lo..hi), as the engine does
        from realm_web.engines.ort_lora import LoraTables

        if any(lora_rows):
            lo, hi, order, inverse = LoraTables.groups(np.array(lora_rows, np.int64), 1)
        else:  # the LoRA graph with no adapter row (engines run the plain graph then)
            lo, hi, order, inverse = 1, 1, np.full((1, 1, 2), B, np.int64), np.full(B, 2, np.int64)
        entries = hi - lo + 1
        feeds["lora_order"], feeds["lora_inverse"] = order, inverse
    if "lora_slot" in ins or "lora_order" in ins:
        if "lora_slot" in ins:
            feeds["lora_slot"] = np.array(lora_rows, np.int64)
        for name, vi in ins.items():
            if name.startswith("lora.") :
                shape = [d.dim_value or entries for d in vi.type.tensor_type.shape.dim]
                t = (rng.standard_normal(shape) * 0.01).astype(np.float16 if vi.type.tensor_type.elem_type == 10 else ft)
                if a_form(name, shape) == "gather":
                    t[0] = 0
                keep.append(ort.OrtValue.ortvalue_from_numpy(t, dev, 0))
                bnd.bind_ortvalue_input(name, keep[-1])
    for k, v in feeds.items():
        keep.append(ort.OrtValue.ortvalue_from_numpy(v, dev, 0))
        bnd.bind_ortvalue_input(k, keep[-1])
    lo = next(o for o in graph.output if o.name == "logits").type.tensor_type
    vocab = lo.shape.dim[-1].dim_value
    logits = ort.OrtValue.ortvalue_from_shape_and_type((B, 1, vocab), np.float16 if lo.elem_type == 10 else np.float32, dev, 0)  # fixed: CUDA graphs replay it
    keep.append(logits)
    bnd.bind_ortvalue_output("logits", logits)

    def run() -> None:
        sess.run_with_iobinding(bnd)
        bnd.synchronize_outputs()

    for _ in range(3):
        run()
    run.keep = (sess, kv, keep)  # type: ignore[attr-defined]
    return run


def a_form(name: str, shape: list[int]) -> str:
    return {3: "gather", 4: "grouped"}.get(len(shape), "masked")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--past", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--ranks", default="8,16")
    ap.add_argument("--slots", type=int, default=9)
    ap.add_argument("--forms", default="gather,masked,grouped")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cuda-graph", action="store_true", help="capture each configuration's step (CUDA)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "realm-lora-forms"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lora_forms.json"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Any] = {"base graph": runner(build(work, a.dtype, None, 0, a.slots, a.max_length), a, None, a.threads)}
    for rank in [int(r) for r in a.ranks.split(",")]:
        for form in a.forms.split(","):
            path = build(work, a.dtype, form, rank, a.slots, a.max_length)
            for distinct in (0, 1, 4, 8):
                lr = [0] * a.rows if distinct == 0 else [1 + (i % distinct) for i in range(a.rows)]
                runs[f"{form} r={rank} adapters={distinct}"] = runner(path, a, lr, a.threads)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.reps):  # round robin: whatever else slows the machine slows every row alike
        for k, run in runs.items():
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["base graph"])
    rows: dict[str, Any] = {}
    for k, ts in times.items():
        t = statistics.median(ts)
        rows[k] = {"ms": round(t * 1e3, 2), "vs_base": round(base / t, 3)}
    print(f"\nLoRA forms: {a.dtype} on {a.device}, decode {a.rows} rows at {a.past} positions, {a.slots} slots, "
          f"all 7 targets, {a.threads} threads; load {os.getloadavg()[0]:.1f}")
    print(f"{'':34} {'ms/step':>8} {'throughput vs base':>19}")
    for k, v in rows.items():
        print(f"{k:34} {v['ms']:8.2f} {v['vs_base']:18.3f}x")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": vars(a), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
