"""LoRA in the browser tab: what an adapter costs a decode step, base model against two adapters in
the same page, on the realm WebGPU kernels (their own LoRA tables) and on WASM (onnxruntime-web's
LoRA twin graph).

    .venv/bin/python bench/browser_lora.py [--backends webgpu,wasm] [--tokens webgpu=8,wasm=32]
        [--pages 2] [--threads 2] [--out bench/results/lora_browser.json]

Adapters (random weights, made here with tests/adapters.py): "all16", rank 16 on all seven
projections (the most an adapter changes: every group of every layer), and "qv8", rank 8 on q and
v (PEFT's usual targets). Each page loads both, warms up once on each and on the base model (shader
and kernel compilation), then times, one after the other and alone (batch 1, greedy, EOS ignored),
the base model, all16 and qv8 on the same chat prompt: decode tok/s from the first token to the
last. "vs base" is the ratio to the base model on the same page; rows are medians over --pages
pages. On this machine WebGPU is SwiftShader (software): its ratios tell the extra arithmetic and
dispatches, not a GPU's cost (bench/webgpu_kernels.sh's kernels_lora row measures that). Not a
test: nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from adapters import write_random_adapter  # noqa: E402
from browser import ARGS, CHROMIUM, serve, wait_quiet  # noqa: E402

PROMPT = "What is the capital of France?"
ADAPTERS = {"all16": dict(r=16, alpha=32, seed=11, b_scale=0.08),
            "qv8": dict(r=8, alpha=16, seed=12, b_scale=0.1, targets=("q_proj", "v_proj"))}

RUN = """async ({prompt, adapters, maxTokens}) => {
  const info = await window.realm.ready;
  for (const [name, url] of Object.entries(adapters)) await window.realm.loadAdapter(name, url);
  const names = [null, ...Object.keys(adapters)];
  for (const a of names) await window.realm.generate(prompt, {maxTokens: 3, adapter: a, ignoreEos: true});
  const out = {};
  for (const a of names) {
    let first = null;
    const t0 = performance.now();
    const r = await window.realm.stream(prompt, {maxTokens, adapter: a, ignoreEos: true},
                                        (d) => { if (first === null && d.tokenIds.length) first = performance.now(); });
    const t1 = performance.now();
    out[a ?? "base"] = {seconds: (t1 - t0) / 1000, decode_seconds: (t1 - (first ?? t1)) / 1000, tokens: r.tokenIds.length};
  }
  return {info: {backend: info.backend, kernels: info.kernels ?? null, dtype: info.dtype, threads: info.threads}, out};
}"""


def say(msg: str) -> None:
    print(f"[bench/browser_lora] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="webgpu,wasm")
    ap.add_argument("--tokens", default="webgpu=8,wasm=32")
    ap.add_argument("--pages", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet", type=float, default=0.25)
    ap.add_argument("--out", default=str(HERE / "results" / "lora_browser.json"))
    a = ap.parse_args()
    backends = a.backends.split(",")
    tokens = {k: int(v) for k, v in (x.split("=") for x in a.tokens.split(","))}
    model_dir = Path(subprocess.run([sys.executable, "-m", "realm_web.cli", "pull"], check=True, capture_output=True,
                                    text=True, cwd=ROOT).stdout.strip().splitlines()[-1])
    if not (ROOT / "build" / "web" / "index.html").exists():
        subprocess.run(["make", "web"], check=True, cwd=ROOT)
    arch = json.loads((model_dir / "realm.json").read_text())["architecture"]
    where = HERE / "browser" / "models" / "lora"  # (git-ignored) served as /tjs-models/lora/ by browser.serve
    for name, kw in ADAPTERS.items():
        write_random_adapter(where / name, arch, **kw)  # type: ignore[arg-type]
    urls = {name: f"/tjs-models/lora/{name}/" for name in ADAPTERS}
    srv, site = serve(model_dir, model_dir)
    from playwright.sync_api import sync_playwright

    samples: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True)
        ctx.set_default_timeout(0)
        version = ctx.browser.version if ctx.browser else None
        for rnd in range(a.pages):
            for b in backends:
                wait_quiet(a.quiet, 300)
                page = ctx.new_page()
                try:
                    page.goto(f"{site}/?backend={b}&threads={a.threads}")
                    raw = page.evaluate(RUN, {"prompt": PROMPT, "adapters": urls, "maxTokens": tokens.get(b, 8)})
                finally:
                    page.close()
                samples[b].append(raw)
                say(f"round {rnd + 1}/{a.pages} {b}: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in raw["out"].items()))
        ctx.close()
    srv.shutdown()
    rows: dict[str, Any] = {}
    for b in backends:
        smp = samples[b]
        rate = {k: statistics.median((s["out"][k]["tokens"] - 1) / s["out"][k]["decode_seconds"] for s in smp)
                for k in smp[0]["out"]}
        for k, r in rate.items():
            rows[f"{b} ({smp[0]['info']['kernels'] or 'onnxruntime-web'}), {k}"] = {
                "decode_tok_s": round(r, 3), "vs_base": round(r / rate["base"], 3),
                "seconds": [round(s["out"][k]["seconds"], 2) for s in smp], "tokens": smp[0]["out"][k]["tokens"]}
    env = {"chromium": version, "backends": backends, "tokens": tokens, "pages": a.pages, "threads": a.threads,
           "adapters": {k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()} for k, v in ADAPTERS.items()},
           "info": {b: samples[b][0]["info"] for b in backends}, "python": platform.python_version(),
           "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    print(f"{'configuration':40s} {'decode tok/s':>12s} {'vs base':>8s}")
    for k, r in rows.items():
        print(f"{k:40s} {r['decode_tok_s']:12.3f} {r['vs_base']:8.3f}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
