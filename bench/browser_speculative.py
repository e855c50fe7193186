"""Speculative decoding in the browser tab: realm-web's page on WASM in headless Chromium, n-gram
speculation against plain decoding, same run, per workload of bench/speculative.py.

    .venv/bin/python bench/browser_speculative.py [--workloads grounded,chat] [--new 96] [--pages 2]
        [--threads 2] [--out bench/results/speculative_browser.json]

Each page loads the model once (`?speculative=ngram` or plain), warms up with two
48-token generations (V8 tiers onnxruntime-web's WASM up from Liftoff code as it runs), then generates each prompt of each workload alone (batch 1, greedy, up to --new
tokens, ending where the model ends it), timing window.realm.generate from the call to the
answer (prefill included; "decode" columns: from the first token to the answer). Pages alternate between configurations in rounds, --pages rounds;
tok/s is the tokens over the median time per workload; "vs plain" is the ratio to plain
decoding in the same run; "identical" compares the token ids with plain decoding's. Not a test:
nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from browser import ARGS, CHROMIUM, serve, setup, wait_quiet  # noqa: E402
from speculative import WORKLOADS  # noqa: E402

RUN = """async ({prompts, maxTokens, warmups}) => {
  const info = await window.realm.ready;
  // V8 first runs onnxruntime-web's kernels as Liftoff code and tiers them up to TurboFan while
  // they run (a fresh page's first ~40 steps are up to 3x slower): warm up past that, verify rows too
  for (const w of warmups) await window.realm.generate(w, {maxTokens: 48});
  const before = (await window.realm.stats()).speculative || null;
  const out = [];
  for (const p of prompts) {
    let first = null;
    const t0 = performance.now();
    const r = await window.realm.stream(p, {maxTokens}, (d) => { if (first === null && d.tokenIds.length) first = performance.now(); });
    const t1 = performance.now();
    out.push({seconds: (t1 - t0) / 1000, decode_seconds: (t1 - (first ?? t1)) / 1000, ids: r.tokenIds});
  }
  const after = (await window.realm.stats()).speculative || null;
  return {info: {backend: info.backend, dtype: info.dtype, threads: info.threads, speculative: info.speculative,
                 stepCosts: info.stepCosts || null},
          out, before, after};
}"""


WARMUPS = ["Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog.",
           "Name three colours."]


def say(msg: str) -> None:
    print(f"[bench/browser_speculative] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="grounded,chat")
    ap.add_argument("--new", type=int, default=96)
    ap.add_argument("--pages", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet", type=float, default=0.25)
    ap.add_argument("--out", default=str(HERE / "results" / "speculative_browser.json"))
    a = ap.parse_args()
    workloads = a.workloads.split(",")
    prompts = [p for w in workloads for p in WORKLOADS[w]]
    model_dir, gguf = setup()
    srv, site = serve(model_dir, gguf)
    from playwright.sync_api import sync_playwright

    configs = {"plain": "", "ngram": "&speculative=ngram"}
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True)
        ctx.set_default_timeout(0)
        version = ctx.browser.version if ctx.browser else None
        for rnd in range(a.pages):
            for name, q in configs.items():
                wait_quiet(a.quiet, 300)
                page = ctx.new_page()
                try:
                    page.goto(f"{site}/?backend=wasm&threads={a.threads}{q}")
                    raw = page.evaluate(RUN, {"prompts": prompts, "maxTokens": a.new, "warmups": WARMUPS})
                finally:
                    page.close()
                samples[name].append(raw)
                n = sum(len(o["ids"]) for o in raw["out"])
                say(f"round {rnd + 1}/{a.pages} {name}: {n} tokens in {sum(o['seconds'] for o in raw['out']):.1f} s")
        ctx.close()
    srv.shutdown()
    rows: dict[str, Any] = {}
    for w in workloads:
        idx = [i for i, pr in enumerate(prompts) if pr in WORKLOADS[w]]
        base = dec_base = None
        for name in configs:
            smp = samples[name]
            times = [sum(s["out"][i]["seconds"] for i in idx) for s in smp]
            ids = [smp[0]["out"][i]["ids"] for i in idx]
            tokens = sum(len(x) for x in ids)
            rate = tokens / statistics.median(times)
            dec = statistics.median([sum(s["out"][i]["decode_seconds"] for i in idx) for s in smp])
            dec_rate = (tokens - len(idx)) / dec if dec > 0 else 0.0
            base = rate if name == "plain" else base
            dec_base = dec_rate if name == "plain" else dec_base
            row: dict[str, Any] = {"tok_s": round(rate, 2), "vs_plain": round(rate / base, 3) if base else None,
                                   "decode_tok_s": round(dec_rate, 2),
                                   "decode_vs_plain": round(dec_rate / dec_base, 3) if dec_base else None,
                                   "tokens": tokens, "seconds": [round(t, 2) for t in times],
                                   "per_prompt_seconds": [[round(s["out"][i]["seconds"], 2) for i in idx] for s in smp],
                                   "identical": ids == [samples["plain"][0]["out"][i]["ids"] for i in idx]}
            rows[f"{w}, batch 1, {name}"] = row
    for name in configs:  # acceptance over the whole page (every workload)
        s = samples[name][0]
        if s["after"]:
            d = {k: s["after"][k] - (s["before"] or {}).get(k, 0) for k in s["after"] if isinstance(s["after"][k], int)}
            rows[f"all, {name}, speculative counters (page 1)"] = d
    costs = samples["ngram"][0]["info"].get("stepCosts")
    if costs:  # what the calibration says speculation can give at best: every draft accepted
        r, t, k = costs["run_seconds"], costs["token_seconds"], 4
        rows["bound: k=4, every draft accepted (from the page's calibration)"] = {
            "run_ms": round(1000 * r, 2), "token_ms": round(1000 * t, 2),
            "verify_5_vs_decode_1": round((r + 5 * t) / (r + t), 2),
            "max_decode_vs_plain": round((k + 1) * (r + t) / (r + (k + 1) * t), 3)}
    env = {"chromium": version, "backend": "wasm", "threads": a.threads, "new": a.new, "pages": a.pages,
           "info": samples["ngram"][0]["info"], "python": platform.python_version(), "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    print(f"{'configuration':30s} {'tok/s':>8s} {'vs plain':>8s} {'decode tok/s':>12s} {'vs plain':>8s} {'identical':>9s}")
    for k, r in rows.items():
        if "tok_s" in r:
            print(f"{k:30s} {r['tok_s']:8.2f} {r['vs_plain']:8.3f} {r['decode_tok_s']:12.2f} {r['decode_vs_plain']:8.3f} "
                  f"{str(r['identical']):>9s}")
        else:
            print(f"{k:30s} {r}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
