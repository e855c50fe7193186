"""Node.js benchmark: the realm-web npm package (Pyodide + the core) on onnxruntime-web WASM (1 and
2 threads) and on onnxruntime-node, against the native Python engine (realm_web LLM on onnxruntime
CPU), in one run on one machine.

Greedy, the 37-token chat prompt "What is the capital of France?", 128 new tokens (EOS ignored so
every engine makes all of them). Per row: time to first token and decode tokens/s (127 tokens after
the first / their time), the median of --reps runs after a warm-up, and the aggregate tokens/s of
--concurrent different prompts at once (the core batches them; the Node bridge decodes them in one
session.run). Ratios are against the Python engine's row of the same export and thread count
(WASM rows: its fp32 row at 2 threads), measured in this run.
Each Node row runs in its own process (onnxruntime-web fixes its thread count per process);
os.getloadavg() is recorded around every row because other work shares this machine.

    .venv/bin/python bench/node.py [--reps 3] [--concurrent 4] [--out bench/results/node.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "What is the capital of France?"
PROMPTS = [PROMPT, "Name three colors.", "What is 2 + 2?", "Write a haiku about the sea.",
           "Tell me a story about a dragon.", "Why is the sky blue?", "List the planets.", "Say hello in French."]
NEW = 128
THREADS = 2


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bench_python(model_dir: Path, dtype: str, threads: int, reps: int, concurrent: int) -> dict[str, Any]:
    """The native Python engine: realm_web.LLM on onnxruntime (CPU)."""
    from realm_web import LLM, SamplingParams

    out: dict[str, Any] = {"engine": "python native", "threads": threads, "dtype": dtype, "loadavg_before": loadavg()}
    t = time.perf_counter()
    llm = LLM(model_dir, dtype=dtype, threads=threads, max_length=512)
    out["load_s"] = round(time.perf_counter() - t, 2)
    p = SamplingParams(max_tokens=NEW, ignore_eos=True)
    llm.generate(PROMPT, p)  # warm-up
    runs = [llm.generate(PROMPT, p)[0] for _ in range(reps)]
    rates = [(NEW - 1) / c.timings["decode_s"] for c in runs]
    out.update(ttft_s=statistics.median(c.timings["ttft_s"] for c in runs), decode_tok_s=statistics.median(rates),
               decode_tok_s_all=[round(r, 1) for r in rates], ttft_s_all=[c.timings["ttft_s"] for c in runs],
               tokens=runs[0].token_ids)
    if concurrent > 1:
        cs = []
        for _ in range(reps):
            t = time.perf_counter()
            done = llm.generate(PROMPTS[:concurrent], p)
            s = time.perf_counter() - t
            cs.append((sum(len(c.token_ids) for c in done) / s, s))
        out["concurrent"] = {"n": concurrent, "tok_s": statistics.median(c[0] for c in cs),
                             "tok_s_all": [round(c[0], 1) for c in cs], "wall_s": statistics.median(c[1] for c in cs)}
    llm.close()
    out["loadavg_after"] = loadavg()
    return out


def bench_node(model_dir: Path, engine: str, threads: int, dtype: str | None, reps: int, concurrent: int) -> dict[str, Any]:
    args = {"model": str(model_dir), "engine": engine, "threads": threads, "dtype": dtype, "prompts": PROMPTS,
            "newTokens": NEW, "reps": reps, "concurrent": concurrent}
    r = subprocess.run(["node", str(ROOT / "bench" / "node_bench.mjs"), json.dumps(args)], check=False, cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return {"engine": f"node {engine}", "threads": threads, "dtype": dtype, "error": r.stderr[-2000:]}
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    out["engine"] = f"node {engine}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=4, help="prompts at once for the aggregate row (1: skip)")
    ap.add_argument("--model", default=None, help="model directory (default: realm-web pull's)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "node.json"))
    ap.add_argument("--reference", default=str(ROOT / "bench" / "reference" / "node_cpu.json"),
                    help="where to copy the JSON too ('' for nowhere)")
    a = ap.parse_args()
    if shutil.which("node") is None or not (ROOT / "wasm" / "node_modules" / "onnxruntime-node").exists():
        print("node and wasm/node_modules are needed: run `make web`", file=sys.stderr)
        return 1
    from realm_web import load_manifest
    from realm_web.export.pull import pull

    model_dir = Path(a.model) if a.model else pull()
    m = load_manifest(model_dir)
    wasm_dtype, cpu_dtype = m.variant_for("wasm").dtype, m.variant_for("cpu").dtype

    rows: dict[str, dict[str, Any]] = {}
    plan: list[tuple[str, Any]] = []
    for t in (1, THREADS):  # the native engines at 1 and 2 threads, each next to its Python anchor
        plan.append((f"python native {cpu_dtype} {t}t", lambda t=t: bench_python(model_dir, cpu_dtype, t, a.reps, a.concurrent)))
        plan.append((f"node native {cpu_dtype} {t}t", lambda t=t: bench_node(model_dir, "native", t, cpu_dtype, a.reps, a.concurrent)))
    plan += [
        (f"python native {wasm_dtype} {THREADS}t", lambda: bench_python(model_dir, wasm_dtype, THREADS, a.reps, a.concurrent)),
        (f"node native {wasm_dtype} {THREADS}t", lambda: bench_node(model_dir, "native", THREADS, wasm_dtype, a.reps, a.concurrent)),
        (f"node wasm {wasm_dtype} 1t", lambda: bench_node(model_dir, "wasm", 1, wasm_dtype, a.reps, a.concurrent)),
        (f"node wasm {wasm_dtype} 2t", lambda: bench_node(model_dir, "wasm", 2, wasm_dtype, a.reps, a.concurrent)),
    ]
    for name, run in plan:
        rows[name] = run()
        print(f"done: {name} (loadavg {loadavg()})", file=sys.stderr)

    ref_tokens = rows[f"python native {wasm_dtype} {THREADS}t"].get("tokens")
    print(f"\nNode.js vs the native Python engine: greedy, {NEW} new tokens, chat prompt {PROMPT!r}, "
          f"median of {a.reps} ({platform.processor() or platform.machine()}, {os.cpu_count()} cpus)")
    print(f"{'engine':26} {'TTFT ms':>8} {'decode tok/s':>13} {'vs python':>10} {f'{a.concurrent} at once tok/s':>18} "
          f"{'vs python':>10} {'= python':>9} {'loadavg (1m)':>13}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:26} error: {r['error'].strip().splitlines()[-1][:80]}")
            continue
        # the anchor: the Python engine on the same export, same threads (else its THREADS row)
        base = rows.get(f"python native {r['dtype']} {r['threads']}t") or rows.get(f"python native {r['dtype']} {THREADS}t", {})
        r["ratio_vs_python"] = round(r["decode_tok_s"] / base["decode_tok_s"], 3) if "decode_tok_s" in base else None
        conc, bconc = r.get("concurrent", {}), base.get("concurrent", {})
        if conc and bconc:
            conc["ratio_vs_python"] = round(conc["tok_s"] / bconc["tok_s"], 3)
        same = base.get("tokens") == r.get("tokens") if base else None
        r["tokens_equal_python"] = same
        ratio = f"{r['ratio_vs_python']:.2f}x" if r["ratio_vs_python"] else ""
        cr = f"{conc['ratio_vs_python']:.2f}x" if conc.get("ratio_vs_python") else ""
        ct = f"{conc['tok_s']:.1f}" if conc else ""
        la = f"{r['loadavg_before'][0]:.1f}->{r['loadavg_after'][0]:.1f}"
        print(f"{name:26} {r['ttft_s'] * 1e3:8.1f} {r['decode_tok_s']:13.1f} {ratio:>10} {ct:>18} {cr:>10} "
              f"{'yes' if same else 'no':>9} {la:>13}")
        for k in ("ttft_s", "decode_tok_s"):
            r[k] = round(r[k], 4 if k == "ttft_s" else 1)
    doc = {"prompt": PROMPT, "new_tokens": NEW, "reps": a.reps, "concurrent": a.concurrent, "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "node": subprocess.run(["node", "--version"], check=False, capture_output=True, text=True).stdout.strip(),
           "command": "python bench/node.py " + " ".join(sys.argv[1:]), "rows": rows,
           "reference_tokens_fp32_first16": (ref_tokens or [])[:16]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {out}")
    if a.reference:
        Path(a.reference).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, a.reference)
        print(f"copied to {a.reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
