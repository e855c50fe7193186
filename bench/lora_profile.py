"""Where a decode step's time goes with LoRA: onnxruntime's profiler over one decode step of
--rows rows (KV bound in place, random adapter tables), for the plain graph, the LoRA graph with
one adapter and with --adapters distinct ones. Per op type: kernel ms per step and node count;
the gap between the run time and the kernels' sum is onnxruntime's per-node overhead.

    .venv/bin/python bench/lora_profile.py [--dtype int4] [--rows 16] [--adapters 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def profile(path: Path, entries: list[int] | None, a: Any, tag: str) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    from realm_web.engines.ort_lora import LoraTables
    from realm_web.manifest import load_manifest

    m = load_manifest(path.parent)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = a.threads, 1, 3
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"realm-lora-profile-{tag}")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in onnx.load(str(path), load_external_data=False).graph.input}
    g, B, L = m.graph, a.rows, a.past + 64
    bnd, keep = sess.io_binding(), []
    for i in range(m.num_layers):
        for kv in ("key", "value"):
            t = ort.OrtValue.ortvalue_from_numpy(np.zeros((B, m.num_kv_heads, L, m.head_dim), np.float32))
            keep.append(t)
            bnd.bind_ortvalue_input(g.past(i, kv), t)
            bnd.bind_ortvalue_output(g.present(i, kv), t)
    feeds = {g.input_ids: np.full((B, 1), 100, np.int64), g.attention_mask: np.ones((B, a.past + 1), np.int64),
             g.logits_index: np.zeros((B, 1), np.int64)}
    if entries is not None:
        assert g.lora is not None
        lo, hi, order, inverse = LoraTables.groups(np.array(entries, np.int64), 1)
        feeds[g.lora.order], feeds[g.lora.inverse] = order, inverse
        rng = np.random.default_rng(0)
        for name, vi in ins.items():
            if name.startswith("lora."):
                shape = [d.dim_value or (hi - lo + 1) for d in vi.type.tensor_type.shape.dim]
                keep.append(ort.OrtValue.ortvalue_from_numpy((rng.standard_normal(shape) * 0.01).astype(np.float32)))
                bnd.bind_ortvalue_input(name, keep[-1])
    for k, v in feeds.items():
        keep.append(ort.OrtValue.ortvalue_from_numpy(v))
        bnd.bind_ortvalue_input(k, keep[-1])
    bnd.bind_output(g.logits, "cpu")
    for _ in range(a.steps):
        sess.run_with_iobinding(bnd)
    f = sess.end_profiling()
    events = json.loads(Path(f).read_text())
    os.remove(f)
    runs = [e["dur"] for e in events if e.get("name") == "model_run"][a.warm:]
    ops: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    for e in events[:]:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            ops[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    n = a.steps
    return {"run_ms": round(sum(runs) / len(runs) / 1e3, 2), "kernel_ms": round(sum(ops.values()) / n / 1e3, 2),
            "nodes": sum(nodes.values()) // n,
            "ops": {op: {"ms": round(t / n / 1e3, 2), "nodes": nodes[op] // n} for op, t in ops.most_common()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--past", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lora_profile.json"))
    a = ap.parse_args()

    from realm_web.manifest import load_manifest
    from realm_web.paths import default_model_dir

    m = load_manifest(a.model or default_model_dir())
    v = m.variants[a.dtype]
    if not v.lora_file:
        raise SystemExit(f"{m.directory}: the {a.dtype} export has no LoRA graph")
    k = a.adapters
    cases = {"plain graph": (Path(m.directory, v.file), None),
             "LoRA graph, 1 adapter": (Path(m.directory, v.lora_file), [1] * a.rows),
             f"LoRA graph, {k} adapters": (Path(m.directory, v.lora_file), [1 + i * k // a.rows for i in range(a.rows)])}
    rows = {name: profile(p, e, a, str(i)) for i, (name, (p, e)) in enumerate(cases.items())}
    print(f"\ndecode step, {a.rows} rows at {a.past} positions, {a.dtype}, {a.threads} threads (onnxruntime profiler)")
    print(f"{'':28s} {'run ms':>8s} {'kernels ms':>11s} {'overhead ms':>12s} {'nodes':>6s}   top ops (ms, nodes)")
    for name, r in rows.items():
        top = ", ".join(f"{op} {x['ms']:.1f}/{x['nodes']}" for op, x in list(r["ops"].items())[:5])
        print(f"{name:28s} {r['run_ms']:8.1f} {r['kernel_ms']:11.1f} {r['run_ms'] - r['kernel_ms']:12.1f} "
              f"{r['nodes']:6d}   {top}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": vars(a), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
