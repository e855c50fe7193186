"""Browser benchmark: realm-web in headless Chromium against transformers.js and wllama, same run.

    .venv/bin/python bench/browser.py [--engines realm,realm-plain,download,tjs,tjs-plain,wllama,webgpu] [--threads 1,2]
                                      [--tokens 128] [--pages 3] [--tjs-dtypes fp32,q8] [--tjs-ort own,realm]
                                      [--webgpu-tokens 4] [--out bench/results/browser.json]

The page is served locally and cross-origin isolated (COOP/COEP, so WASM threads work); every
engine runs in the same Chromium (Debian's, driven by Playwright) in the same run, on the same
37-token chat prompt ("What is the capital of France?" through the chat template with the
default system prompt), greedy, --tokens new tokens with EOS ignored. Each row is the median of
--pages fresh pages (taken in rounds across the engines, so that load from other work on the
machine hits every row alike); on each page the engine loads, makes one short warm-up generation,
then one timed generation. TTFT: from the call in the page (text in, the engine's own chat template and
tokenizer inside the timing) to the first token back in the page; decode tok/s: the tokens after
the first over their time.

  realm-web        the page in build/web (Pyodide + the Python core in a worker, onnxruntime-web
                   WASM, model.onnx fp32, the manifest's WASM choice), 1 and 2 threads; per step
                   it reports the time in Python (the core, plus the Pyodide <-> JS crossing)
                   against the time in the JS bridge and in ORT's run().
  realm-plain      the same page and graph, but from the 540 MB fp32 file (?packed=0) instead of the
                   packed download (export/packed.py: the GGUF's blocks, expanded in the worker):
                   decode speed packed / plain should be 1.0 (the same fp32 graph and kernels).
  download         first visit in a fresh browser profile and a reload, packed and fp32 file:
                   time to ready (goto -> window.realm.ready), model bytes over the wire (counted by
                   the browser; the server is local, so time to ready is processing, not network).
  webgpu           realm-web on WebGPU (SwiftShader here: software, a few tokens only, functional).
  transformers.js  npm @huggingface/transformers on the very same ONNX file (fp32 model.onnx, and
                   our int8 file as its q8 model_quantized.onnx), through a thin adapter that adds
                   our graph's extra input `logits_index` (bench/browser/ort-adapter.mjs).
                   --tjs-ort own: its own onnxruntime-web pin (the anchor); realm: the build realm-web
                   uses (a diagnostic row: same graph, same runtime, only the orchestration differs).
                   Our int8 file does not load there: onnxruntime-web's WASM EP has no
                   GatherBlockQuantized (its 8-bit embedding); the row records the error.
  tjs-plain        transformers.js fp32 on a plain torch.onnx export of the same weights (standard
                   inputs, made once with torch): how transformers.js is usually fed.
  wllama           npm @wllama/wllama (llama.cpp) on the Q4_1 GGUF the export came from.

Sets itself up: `npm ci` in bench/browser/ (the anchors' pinned packages), `make web` if
build/web is missing, `realm-web pull` for the model. Writes bench/results/browser.json and
prints a table with realm-web / anchor ratios computed within the run. Not a test: nothing here
asserts a timing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "bench" / "browser"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--enable-unsafe-webgpu"]
QUESTION = "What is the capital of France?"
WARMUP_TOKENS = 8


def say(msg: str) -> None:
    print(f"[bench/browser] {msg}", file=sys.stderr, flush=True)


# -- setup ------------------------------------------------------------------------------------------
def setup() -> tuple[Path, Path]:
    """The anchors' npm packages, the web bundle, the model and the GGUF; returns (model_dir, gguf)."""
    stamp = HERE / "node_modules" / ".stamp"
    lock = HERE / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        say("npm ci in bench/browser (transformers.js, wllama)")
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}  # its postinstall would go online
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error", "--ignore-scripts"],
                       cwd=HERE, check=True, env=env)
        stamp.touch()
    if not (ROOT / "build" / "web" / "index.html").exists() or not (ROOT / "wasm" / "node_modules").exists():
        say("make web")
        subprocess.run(["make", "web"], cwd=ROOT, check=True)
    else:  # refresh the page's links and the core's wheel (cheap)
        subprocess.run([sys.executable, str(ROOT / "tools" / "build_web.py")], check=True, capture_output=True)
    from realm_web.export.pull import fetch_gguf, pull

    model_dir = pull()
    gguf = fetch_gguf()
    return model_dir, gguf


def tjs_model_folder(model_dir: Path, name: str = "smollm2", link_ours: bool = True) -> Path:
    """transformers.js's view of our export: its config files and onnx/ names, linking our files."""
    m = json.loads((model_dir / "realm.json").read_text())
    a = m["architecture"]
    out = HERE / "models" / name
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    eos = m["eos_token_ids"][0]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a["hidden_size"],
              "intermediate_size": a["intermediate_size"], "num_hidden_layers": a["num_layers"],
              "num_attention_heads": a["num_heads"], "num_key_value_heads": a["num_kv_heads"],
              "head_dim": a["head_dim"], "vocab_size": a["vocab_size"], "rms_norm_eps": a["rms_norm_eps"],
              "rope_theta": a["rope_theta"], "max_position_embeddings": a["max_position_embeddings"],
              "tie_word_embeddings": a["tie_word_embeddings"], "bos_token_id": m["special_tokens"]["bos_token_id"],
              "eos_token_id": eos, "pad_token_id": eos, "torch_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": config["bos_token_id"],
                                                            "eos_token_id": eos, "pad_token_id": eos}))
    shutil.copy(model_dir / "tokenizer.json", out / "tokenizer.json")
    tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    tc["chat_template"] = (model_dir / "chat_template.jinja").read_text()  # it does not read the .jinja file
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=1))
    for fname, variant in (("model.onnx", "fp32"), ("model_quantized.onnx", "int8")) if link_ours else ():
        link = out / "onnx" / fname
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(model_dir / m["variants"][variant]["file"])
    return out


def plain_export(gguf: Path, folder: Path) -> Path:
    """A plain torch.onnx.export (legacy, opset 17) of the same weights under the standard decoder
    names transformers.js expects (input_ids, attention_mask, position_ids, past_key_values.N.* ->
    logits for every position, present.N.*): how one usually makes a model for transformers.js.
    Not a realm-web graph: only for the --engines tjs-plain row. Cached beside the model."""
    from realm_web.paths import home

    out = home() / "bench" / "browser-plain"
    path = out / "model.onnx"
    if not path.exists():
        say(f"plain torch.onnx.export of the GGUF's weights -> {path} (once)")
        from anchors import export_plain, hf_dir_from_gguf

        out.mkdir(parents=True, exist_ok=True)
        export_plain(hf_dir_from_gguf(gguf, out / "hf"), out, "cpu", "fp32")
    link = folder / "onnx" / "model.onnx"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path)
    return path


def serve(model_dir: Path, gguf: Path) -> tuple[Any, str]:
    import functools
    import http.server

    # COOP/COEP on every response, MIME types, /models/default/
    from serve_web import Handler

    class BenchHandler(Handler):
        def translate_path(self, path: str) -> str:
            p = path.split("?", 1)[0].split("#", 1)[0]
            if p.startswith("/bench/"):
                return str(HERE / p[len("/bench/"):])
            if p.startswith("/tjs-models/"):
                return str(HERE / "models" / p[len("/tjs-models/"):])
            if p == "/gguf/model.gguf":
                return str(gguf)
            return super().translate_path(path)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    BenchHandler.model_dir = model_dir
    handler = functools.partial(BenchHandler, directory=str(ROOT / "build" / "web"))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{port}"


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over `seconds` (from /proc/stat); between pages that is other work."""
    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(limit: float, max_wait: float) -> float:
    """The machine is shared (2 cores, other work runs tests): wait for a quiet moment before a page."""
    t0 = time.time()
    busy = cpu_busy()
    if busy > limit:
        say(f"CPU {busy:.0%} busy with other work: waiting (up to {max_wait:.0f} s)")
    while busy > limit and time.time() - t0 < max_wait:
        time.sleep(8)
        busy = cpu_busy()
    if time.time() - t0 > 5:
        say(f"waited {time.time() - t0:.0f} s; CPU {busy:.0%} busy")
    return busy


# -- one page per sample ------------------------------------------------------------------------------
REALM_RUN = """async ({question, maxTokens, warmup}) => {
  const info = await window.realm.ready;
  if (warmup) await window.realm.generate(question, {maxTokens: warmup, ignoreEos: true});
  await window.realm._call("trace", {on: true});
  const ids = [], times = [];
  const t0 = performance.now();
  const r = await window.realm.stream(question, {maxTokens, ignoreEos: true}, (d) => {
    const now = performance.now();
    for (const id of d.tokenIds) { ids.push(id); times.push(now); }
  });
  const t1 = performance.now();
  const trace = await window.realm._call("trace", {on: false});
  return {info, r, ids, times, t0, t1, timeOrigin: performance.timeOrigin, trace};
}"""


def realm_page(ctx: Any, site: str, backend: str, threads: int, dtype: str | None, tokens: int,
               warmup: int, packed: bool = True) -> dict[str, Any]:
    page = ctx.new_page()
    try:
        q = f"backend={backend}&threads={threads}" + (f"&dtype={dtype}" if dtype else "") + ("" if packed else "&packed=0")
        page.goto(f"{site}/?{q}")
        raw = page.evaluate(REALM_RUN, {"question": QUESTION, "maxTokens": tokens, "warmup": warmup})
    finally:
        page.close()
    return realm_summary(raw)


def realm_summary(raw: dict[str, Any]) -> dict[str, Any]:
    ids, times, t0 = raw["ids"], raw["times"], raw["t0"]
    n = len(ids)
    out: dict[str, Any] = {
        "ttft_s": (times[0] - t0) / 1000, "n_tokens": n,
        "decode_tok_s": (n - 1) / ((times[-1] - times[0]) / 1000) if n > 1 else None,
        "tokens": ids, "prompt_tokens": len(raw["r"]["promptTokenIds"]), "prompt_ids": raw["r"]["promptTokenIds"],
        "text": raw["r"]["text"], "worker_timings": raw["r"]["timings"],
        "info": {k: raw["info"].get(k) for k in ("backend", "dtype", "file", "threads", "crossOriginIsolated",
                                                 "fromCache", "loadSeconds", "packed")},
    }
    tr = raw["trace"]
    steps = tr.get("steps") or []
    if steps:
        shift = tr["timeOrigin"] - raw["timeOrigin"]  # worker clock -> page clock (ms)
        st = [[x + shift for x in s] for s in steps]
        # st[0] is the prefill step; every later step decodes one token.
        dec = list(range(1, len(st)))
        py = [st[i][0] - st[i - 1][3] for i in dec]          # Python core + Pyodide<->JS between bridge calls
        ort = [st[i][2] - st[i][1] for i in dec]             # session.run()
        js = [(st[i][3] - st[i][0]) - (st[i][2] - st[i][1]) for i in dec]  # bridge: feeds, argmax, JSON
        period = [st[i][3] - st[i - 1][3] for i in dec]
        med = lambda xs: round(statistics.median(xs), 3) if xs else None
        mean = lambda xs: round(statistics.fmean(xs), 3) if xs else None
        tot = sum(py) + sum(ort) + sum(js)
        out["step_profile"] = {
            "decode_steps": len(dec),
            "median_ms": {"step": med(period), "python": med(py), "js_bridge": med(js), "ort_run": med(ort)},
            "mean_ms": {"step": mean(period), "python": mean(py), "js_bridge": mean(js), "ort_run": mean(ort)},
            "share": {"python": round(sum(py) / tot, 4) if tot else None,
                      "js_bridge": round(sum(js) / tot, 4) if tot else None,
                      "ort_run": round(sum(ort) / tot, 4) if tot else None},
            "ttft_ms": {  # the path of the first token, page clock
                "page_to_first_step": round(st[0][0] - t0, 3),       # postMessage + Python: template, tokenize, schedule
                "prefill_ort_run": round(st[0][2] - st[0][1], 3),
                "prefill_js_bridge": round((st[0][3] - st[0][0]) - (st[0][2] - st[0][1]), 3),
                "first_step_to_page": round(times[0] - st[0][3], 3),  # Python: update, detokenize; postMessage
            },
        }
    return out


def download_sample(p: Any, site: str, packed: bool, threads: int) -> dict[str, Any]:
    """A first visit in a fresh browser profile, then a reload: time to ready (goto -> window.realm.ready,
    wall clock) and the model bytes over the wire, counted by the browser."""
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True)
        ctx.set_default_timeout(0)
        sizes: list[tuple[str, int, int]] = []
        phase = [0]
        ctx.on("requestfinished", lambda r: sizes.append((r.url, r.sizes()["responseBodySize"], phase[0])))
        page = ctx.new_page()
        out: dict[str, Any] = {}
        for name, go in (("cold", lambda: page.goto(f"{site}/?backend=wasm&threads={threads}" + ("" if packed else "&packed=0"))),
                         ("warm", page.reload)):
            t0 = time.perf_counter()
            go()
            info = page.evaluate("() => window.realm.ready")
            out[f"{name}_ready_s"] = round(time.perf_counter() - t0, 3)
            out[f"{name}_worker_load_s"] = round(info["loadSeconds"], 3)
            out[f"{name}_model_bytes"] = sum(n for u, n, ph in sizes if ph == phase[0] and "/models/" in u)
            out[f"{name}_all_bytes"] = sum(n for u, n, ph in sizes if ph == phase[0])
            out[f"{name}_from_cache"] = info.get("fromCache")
            if info.get("expandMs") is not None:
                out[f"{name}_expand_ms"] = round(info["expandMs"], 1)
            for k, v in (info.get("stages") or {}).items():  # worker seconds at the end of each stage
                out[f"{name}_{k}"] = round(v, 3)
            phase[0] += 1
        out["file"], out["packed"] = info.get("file"), info.get("packed")
        ctx.close()
    return out


def anchor_page(ctx: Any, site: str, load: str, load_args: dict[str, Any], run: str, tokens: int,
                warmup: int, ort: str = "own") -> dict[str, Any]:
    page = ctx.new_page()
    try:
        page.goto(f"{site}/bench/anchors.html?ort={ort}")
        page.wait_for_function("() => window.benchReady === true")
        info = page.evaluate(f"(a) => window.bench.{load}(a)", load_args)
        if warmup:
            page.evaluate(f"(a) => window.bench.{run}(a)", {"question": QUESTION, "maxTokens": warmup})
        r = page.evaluate(f"(a) => window.bench.{run}(a)", {"question": QUESTION, "maxTokens": tokens})
        r["info"] = info
        r["crossOriginIsolated"] = page.evaluate("() => self.crossOriginIsolated")
    finally:
        page.close()
    return r


def median_row(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ttfts = [s["ttft_s"] for s in samples if s.get("ttft_s") is not None]
    rates = [s["decode_tok_s"] for s in samples if s.get("decode_tok_s") is not None]
    last = samples[-1]
    row: dict[str, Any] = {
        "ttft_s": round(statistics.median(ttfts), 4) if ttfts else None,
        "decode_tok_s": round(statistics.median(rates), 2) if rates else None,
        "ttft_s_all": [round(x, 4) for x in ttfts], "decode_tok_s_all": [round(x, 2) for x in rates],
        "n_tokens": last.get("n_tokens"), "prompt_tokens": last.get("prompt_tokens"), "tokens": last.get("tokens"),
        "same_tokens_every_page": all(s.get("tokens") == last.get("tokens") for s in samples),
    }
    for k in ("info", "text", "engine_timings", "crossOriginIsolated", "prompt_ids"):
        if k in last:
            row[k] = last[k]
    runs = [s["ort_run_ms"] for s in samples if s.get("ort_run_ms")]
    if runs:  # transformers.js on our graph: its session.run per decode step, as realm-web's ort_run
        row["ort_run_ms"] = {"decode_median": round(statistics.median(statistics.median(r[1:]) for r in runs), 3),
                             "prefill": round(statistics.median(r[0] for r in runs), 3)}
    profs = [s["step_profile"] for s in samples if "step_profile" in s]
    if profs:
        def med_of(path: Callable[[dict[str, Any]], float]) -> float:
            return round(statistics.median(path(p) for p in profs), 4)
        row["step_profile"] = {
            "decode_steps": profs[-1]["decode_steps"],
            "median_ms": {k: med_of(lambda p, k=k: p["median_ms"][k]) for k in profs[-1]["median_ms"]},
            "share": {k: med_of(lambda p, k=k: p["share"][k]) for k in profs[-1]["share"]},
            "ttft_ms": {k: med_of(lambda p, k=k: p["ttft_ms"][k]) for k in profs[-1]["ttft_ms"]},
        }
    return row


# -- main -------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="realm,realm-plain,download,tjs,tjs-plain,wllama,webgpu",
                    help="realm, tjs (our file), tjs-plain (a plain torch.onnx export), wllama, webgpu")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--pages", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=WARMUP_TOKENS, help="tokens of the warm-up generation per page")
    ap.add_argument("--realm-dtype", default="", help="realm-web's WASM export (default: the manifest's choice)")
    ap.add_argument("--tjs-dtypes", default="fp32,q8")
    ap.add_argument("--tjs-ort", default="own,realm",
                    help="transformers.js on its own onnxruntime-web pin (own) and/or on realm-web's (realm)")
    ap.add_argument("--webgpu-tokens", type=int, default=4)
    ap.add_argument("--download-pages", type=int, default=2, help="first visits (fresh profiles) per download row")
    ap.add_argument("--quiet", type=float, default=0.25,
                    help="before each page, wait until other work keeps the CPUs under this busy fraction")
    ap.add_argument("--max-wait", type=float, default=300, help="seconds to wait for that, then go on (recorded)")
    ap.add_argument("--combine", nargs="+", metavar="RESULT_JSON",
                    help="no benchmark: merge earlier runs' result files (medians over all their pages) into --out")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "browser.json"))
    a = ap.parse_args()
    if a.combine:
        combine(a.combine, a)
        return 0
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    threads = [int(t) for t in a.threads.split(",") if t.strip()]

    model_dir, gguf = setup()
    tjs_model_folder(model_dir)
    if "tjs-plain" in engines:
        try:
            plain_export(gguf, tjs_model_folder(model_dir, "smollm2-plain", link_ours=False))
        except Exception as e:  # noqa: BLE001  # needs torch + transformers (`pip install -e '.[bench]'`)
            say(f"no plain export, skipping the tjs-plain rows: {e}")
            engines.remove("tjs-plain")
    srv, site = serve(model_dir, gguf)
    say(f"serving {site} (model {model_dir}, gguf {gguf.name})")
    import tempfile

    from playwright.sync_api import sync_playwright

    rows: dict[str, dict[str, Any]] = {}
    load0 = os.getloadavg()
    t_start = time.time()
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True)
        ctx.set_default_timeout(0)
        versions = {"chromium": ctx.browser.version if ctx.browser else None}
        outside: list[str] = []
        ctx.on("request", lambda r: outside.append(r.url) if not r.url.startswith((site, "data:", "blob:")) else None)

        # Every configuration gets one page per round, round after round (not three pages in a row): a
        # burst of load on this shared machine then hits every engine alike instead of one row.
        configs: list[tuple[str, Callable[[], dict[str, Any]], int]] = []
        dtype = a.realm_dtype or None
        for th in threads:
            if "realm" in engines:
                configs.append((f"realm-web wasm {th}t", lambda th=th: realm_page(
                    ctx, site, "wasm", th, dtype, a.tokens, a.warmup), a.pages))
            if "realm-plain" in engines:  # the same fp32 graph from the 540 MB file: the packed download's anchor
                configs.append((f"realm-web wasm {th}t, fp32 file (not packed)", lambda th=th: realm_page(
                    ctx, site, "wasm", th, dtype, a.tokens, a.warmup, packed=False), a.pages))
            if "tjs" in engines:
                for ort in a.tjs_ort.split(","):
                    for dt in a.tjs_dtypes.split(","):
                        name = f"transformers.js {dt} {th}t" + ("" if ort == "own" else f" (ORT {ort})")
                        configs.append((name, lambda dt=dt, th=th, ort=ort: anchor_page(
                            ctx, site, "tjsLoad", {"dtype": dt, "threads": th}, "tjsRun", a.tokens, a.warmup, ort),
                            a.pages))
            if "tjs-plain" in engines:
                configs.append((f"transformers.js fp32 {th}t, plain torch.onnx export", lambda th=th: anchor_page(
                    ctx, site, "tjsLoad", {"dtype": "fp32", "threads": th, "model": "smollm2-plain"}, "tjsRun",
                    a.tokens, a.warmup), a.pages))
            if "wllama" in engines:
                configs.append((f"wllama Q4_1 {th}t", lambda th=th: anchor_page(
                    ctx, site, "wllamaLoad", {"threads": th}, "wllamaRun", a.tokens, a.warmup), a.pages))
        last: list[tuple[str, Callable[[], dict[str, Any]], int]] = []
        if "webgpu" in engines:  # software WebGPU: one page, a few tokens, after the timed rounds
            last.append(("realm-web webgpu (SwiftShader)", lambda: realm_page(
                ctx, site, "webgpu", 1, None, a.webgpu_tokens, 1), 1))

        samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in configs + last}
        rounds = [[c for c in configs if r < c[2]] for r in range(max((c[2] for c in configs), default=0))]
        for todo in [*rounds, last]:
            for name, fn, pages in todo:
                if name in rows:  # failed before
                    continue
                busy = wait_quiet(a.quiet, a.max_wait)
                t = time.time()
                try:
                    smp = fn()
                except Exception as e:  # noqa: BLE001  # an engine that fails is reported, not fatal
                    say(f"{name}: page {len(samples[name]) + 1} failed: {str(e).splitlines()[0][:300]}")
                    rows[name] = {"error": str(e)[:2000]}
                    continue
                smp["load_avg"] = os.getloadavg()
                smp["busy_before"] = busy
                samples[name].append(smp)
                say(f"{name}: page {len(samples[name])}/{pages}: TTFT {smp['ttft_s']:.3f} s, decode "
                    f"{(smp.get('decode_tok_s') or 0):.2f} tok/s, {smp.get('n_tokens')} tokens "
                    f"({time.time() - t:.0f} s, CPU busy before {busy:.0%}, load {smp['load_avg'][0]:.2f})")
        downloads: dict[str, Any] = {}
        if "download" in engines:  # first visit + reload, fresh profiles, after the timed rounds
            for packed in (True, False):
                key = "packed blocks" if packed else "fp32 file"
                got = []
                for i in range(a.download_pages):
                    wait_quiet(a.quiet, a.max_wait)
                    try:
                        got.append(download_sample(p, site, packed, max(threads)))
                    except Exception as e:  # noqa: BLE001
                        downloads[key] = {"error": str(e)[:2000]}
                        break
                    say(f"download {key}: page {i + 1}: {got[-1]}")
                if got:
                    downloads[key] = {k: (statistics.median(x[k] for x in got) if isinstance(got[0][k], (int, float))
                                          and not isinstance(got[0][k], bool) else got[0][k]) for k in got[0]}
                    downloads[key]["samples"] = got
        failed = dict(rows)
        rows.clear()  # in the order of the configurations
        for name, _, _ in configs + last:
            if name in failed:
                rows[name] = failed[name]
            elif samples[name]:
                rows[name] = median_row(samples[name])
                rows[name]["load_avg_per_page"] = [round(x["load_avg"][0], 2) for x in samples[name]]
                rows[name]["cpu_busy_before_page"] = [round(x["busy_before"], 3) for x in samples[name]]
        ctx.close()
    srv.shutdown()

    report(rows, a, site, versions, outside, load0, t_start, downloads=downloads)
    return 0


def threads_of(name: str) -> int | None:
    m = re.search(r" (\d+)t\b", name)
    return int(m.group(1)) if m else None


def ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x and y else None


def combine(paths: list[str], a: argparse.Namespace) -> None:
    """Several runs' result files -> one: every row's TTFT and decode rate become the median over
    all pages of all runs (the step profile: the median of the runs' medians); ratios are recomputed."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    rows: dict[str, dict[str, Any]] = {}
    for name in runs[-1]["rows"]:
        got = [r["rows"][name] for r in runs if name in r["rows"]]
        ok = [g for g in got if "error" not in g]
        if not ok:
            rows[name] = got[-1]
            continue
        row = dict(ok[-1])
        ttfts = [x for g in ok for x in g["ttft_s_all"]]
        rates = [x for g in ok for x in g["decode_tok_s_all"]]
        row.update({"ttft_s": round(statistics.median(ttfts), 4), "decode_tok_s": round(statistics.median(rates), 2),
                    "ttft_s_all": ttfts, "decode_tok_s_all": rates,
                    "per_run": [{"ttft_s": g["ttft_s"], "decode_tok_s": g["decode_tok_s"]} for g in ok],
                    "same_tokens_every_page": all(g.get("tokens") == ok[-1].get("tokens")
                                                  and g.get("same_tokens_every_page") for g in ok)})
        profs = [g["step_profile"] for g in ok if "step_profile" in g]
        if profs:
            row["step_profile"] = {"decode_steps": profs[-1]["decode_steps"], **{
                part: {k: round(statistics.median(p[part][k] for p in profs), 4) for k in profs[-1][part]}
                for part in ("median_ms", "share", "ttft_ms")}}
        rows[name] = row
    last = runs[-1]
    ns = argparse.Namespace(**{**vars(a), "tokens": last["new_tokens"], "pages": sum(r["pages"] for r in runs),
                               "warmup": last["warmup_tokens"], "quiet": last.get("quiet_cpu_busy"),
                               "max_wait": last.get("max_wait_s"),
                               "threads": ",".join(sorted({str(threads_of(k)) for k in rows if threads_of(k)}))})
    a.combined_runs = [{"file": p, "loadavg_start": r["loadavg_start"], "loadavg_end": r["loadavg_end"],
                        "seconds": r["seconds"], "command": r["command"]} for p, r in zip(paths, runs)]
    report(rows, ns, last["site"], dict(last["versions"]), [u for r in runs for u in r["requests_off_origin"]],
           tuple(runs[0]["loadavg_start"]), time.time(), runs=a.combined_runs, load1=tuple(last["loadavg_end"]))


def report(rows: dict[str, dict[str, Any]], a: argparse.Namespace, site: str, versions: dict[str, Any],
           outside: list[str], load0: tuple[float, float, float], t_start: float,
           runs: list[dict[str, Any]] | None = None, load1: tuple[float, float, float] | None = None,
           downloads: dict[str, Any] | None = None) -> None:
    pkgs = {}
    for name in ("@huggingface/transformers", "@wllama/wllama", "onnxruntime-web"):
        pj = HERE / "node_modules" / name / "package.json"
        if pj.exists():
            pkgs[name] = json.loads(pj.read_text())["version"]
    realm_ort = ROOT / "wasm" / "node_modules" / "onnxruntime-web" / "package.json"
    versions.update({"anchors": pkgs, "realm_onnxruntime_web": json.loads(realm_ort.read_text())["version"]
                     if realm_ort.exists() else None})
    # ratios within the run: realm-web at N threads against each other row at N threads
    ratios: dict[str, dict[str, Any]] = {}
    for th in [int(t) for t in a.threads.split(",")]:
        mine = rows.get(f"realm-web wasm {th}t", {})
        if not mine.get("decode_tok_s"):
            continue
        ratios[f"realm-web wasm {th}t"] = {
            k: {"decode_x": ratio(mine["decode_tok_s"], v["decode_tok_s"]),
                "ttft_x": ratio(v.get("ttft_s"), mine.get("ttft_s"))}  # > 1: realm-web is faster
            for k, v in rows.items()
            if not k.startswith("realm-web") and threads_of(k) == th and v.get("decode_tok_s")}
    # the anchors as users get them (transformers.js on its own onnxruntime-web pin, wllama); rows on
    # realm-web's onnxruntime-web build are a diagnostic: same runtime, so they isolate the orchestration
    anchors = {k: v for k, v in rows.items() if not k.startswith("realm-web") and "(ORT" not in k}
    best_anchor = max((v["decode_tok_s"] for v in anchors.values() if v.get("decode_tok_s")), default=None)
    best_anchor_name = next((k for k, v in anchors.items() if v.get("decode_tok_s") == best_anchor), None)
    best_realm = max((v["decode_tok_s"] for k, v in rows.items() if k.startswith("realm-web wasm")
                      and v.get("decode_tok_s")), default=None)
    realm_ttft = min((v["ttft_s"] for k, v in rows.items() if k.startswith("realm-web wasm") and v.get("ttft_s")),
                     default=None)
    # the anchor is real: transformers.js's greedy tokens on our file equal realm-web's
    equal: dict[str, Any] = {}
    for k, v in rows.items():
        if k.startswith("transformers.js") and v.get("tokens"):
            mine = rows.get(f"realm-web wasm {threads_of(k)}t", {})
            if mine.get("tokens"):
                n = min(len(v["tokens"]), len(mine["tokens"]))
                same = next((i for i in range(n) if v["tokens"][i] != mine["tokens"][i]), n)
                equal[k] = {"equal_prefix": same, "of": n, "prompt_ids_equal": v.get("prompt_ids") == mine.get("prompt_ids")}
    result = {
        "benchmark": "browser", "command": "bench/browser.py " + " ".join(sys.argv[1:]),
        "question": QUESTION, "new_tokens": a.tokens, "pages": a.pages, "warmup_tokens": a.warmup,
        "quiet_cpu_busy": a.quiet, "max_wait_s": a.max_wait,
        "greedy": True, "ignore_eos": True, "site": site, "versions": versions,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "loadavg_start": load0, "loadavg_end": load1 or os.getloadavg(),
        "seconds": round(time.time() - t_start, 1),
        **({"combined_runs": runs} if runs else {}),
        "requests_off_origin": outside[:20],
        "rows": rows, "ratios": ratios, "greedy_tokens_vs_realm": equal,
        "downloads": downloads or {}, "packed_vs_fp32_file": packed_ratio(rows, downloads or {}),
        "targets": {"decode_vs_best_anchor": ratio(best_realm, best_anchor), "best_anchor": best_anchor_name,
                    "decode_target_x": 1.2,
                    "best_realm_ttft_s": realm_ttft, "ttft_target_s": 0.4},
        "notes": {
            "adapter": ("transformers.js runs our unchanged ONNX file: an import map sends its "
                        "`onnxruntime-web/webgpu` and `onnxruntime-common` imports to a shim module "
                        "(bench/browser/ort-shim-*.mjs) that re-exports onnxruntime-web with "
                        "InferenceSession.create wrapped (bench/browser/ort-adapter.mjs): the session's "
                        "inputNames/inputMetadata hide `logits_index`, and run() adds "
                        "logits_index=[[seq_len-1]] per row, the last position's logits, which is what "
                        "generate() reads. No position_ids: the graph has none (GQA takes positions from "
                        "attention_mask) and transformers.js sends none when the session lacks it."),
            "eos": ("realm-web: ignoreEos (EOS may be picked and generation goes on); transformers.js: "
                    "generation_config.eos_token_id=null (same rule, so its tokens are comparable); "
                    "wllama: ignore_eos (llama.cpp bans EOG tokens instead, and Q4_1 is other weights)"),
            "ttft": "page call -> first token back in the page, the engine's own chat template + tokenizer inside",
            "step_profile": ("realm-web decode steps, worker clock: python = from the bridge's return to its "
                             "next call (the Python core: update, detokenize, stream, schedule, JSON, and the "
                             "Pyodide<->JS crossing); js_bridge = step() minus session.run (feeds, argmax, "
                             "JSON); ort_run = session.run"),
        },
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print_table(result)
    say(f"wrote {out}")


def packed_ratio(rows: dict[str, dict[str, Any]], downloads: dict[str, Any]) -> dict[str, Any]:
    """The packed download against the fp32 file, same run: decode speed (same graph: ~1.0) and
    bytes and time to ready."""
    out: dict[str, Any] = {}
    for k, v in rows.items():
        if k.endswith("(not packed)") and v.get("decode_tok_s"):
            mine = rows.get(k.split(",")[0], {})
            out[f"decode {k.split(',')[0]}"] = ratio(mine.get("decode_tok_s"), v["decode_tok_s"])
    pk, fp = downloads.get("packed blocks", {}), downloads.get("fp32 file", {})
    if pk.get("cold_model_bytes") and fp.get("cold_model_bytes"):
        out["bytes_x"] = round(pk["cold_model_bytes"] / fp["cold_model_bytes"], 3)
        out["cold_ready_x"] = ratio(fp["cold_ready_s"], pk["cold_ready_s"])  # > 1: packed is ready sooner
        out["warm_ready_x"] = ratio(fp["warm_ready_s"], pk["warm_ready_s"])
    return out


def print_table(res: dict[str, Any]) -> None:
    rows = res["rows"]
    print(f"\nbrowser, {res['new_tokens']} new tokens, greedy, median of {res['pages']} pages, "
          f"load {res['loadavg_start'][0]:.2f} -> {res['loadavg_end'][0]:.2f}")
    print(f"{'engine':50s} {'TTFT s':>8s} {'decode tok/s':>13s} {'realm/this':>11s}")
    for k, v in rows.items():
        if "error" in v:
            print(f"{k:50s} error: {v['error'].splitlines()[0][:60]}")
            continue
        th = threads_of(k)
        mine = rows.get(f"realm-web wasm {th}t", {}) if th else {}
        x = ratio(mine.get("decode_tok_s"), v.get("decode_tok_s")) if not k.startswith("realm-web") else None
        ttft = f"{v['ttft_s']:.3f}" if v.get("ttft_s") is not None else "-"
        dec = f"{v['decode_tok_s']:.2f}" if v.get("decode_tok_s") is not None else "-"
        print(f"{k:50s} {ttft:>8s} {dec:>13s} {(f'{x:.2f}x' if x else ''):>11s}")
    for k, v in rows.items():
        sp = v.get("step_profile")
        if sp and k.startswith("realm-web wasm"):
            m, s = sp["median_ms"], sp["share"]
            print(f"{k}: decode step {m['step']:.2f} ms = python {m['python']:.2f} ({s['python']:.1%}) + "
                  f"js {m['js_bridge']:.2f} ({s['js_bridge']:.1%}) + ort {m['ort_run']:.2f} ({s['ort_run']:.1%}); "
                  f"TTFT path ms {sp['ttft_ms']}")
    for k, v in rows.items():
        if v.get("ort_run_ms"):
            print(f"{k}: session.run per decode step {v['ort_run_ms']['decode_median']:.2f} ms, "
                  f"prefill {v['ort_run_ms']['prefill']:.1f} ms")
    t = res["targets"]
    print(f"targets: decode realm/best anchor ({t['best_anchor']}) {t['decode_vs_best_anchor']} "
          f"(want >= {t['decode_target_x']}), "
          f"TTFT {t['best_realm_ttft_s']} s (want < {t['ttft_target_s']})")
    for k, v in res.get("downloads", {}).items():
        if "error" in v:
            print(f"download {k}: error {v['error'].splitlines()[0][:80]}")
            continue
        mb = v["cold_model_bytes"] / 1e6
        print(f"download {k:14s}: {mb:7.1f} MB over the wire (at 100 Mbit/s: {mb * 8 / 100:5.1f} s), "
              f"ready {v['cold_ready_s']:.2f} s first visit (local server), {v['warm_ready_s']:.2f} s on reload "
              f"({v['warm_model_bytes'] / 1e6:.1f} MB)")
    if res.get("packed_vs_fp32_file"):
        print(f"packed vs fp32 file: {res['packed_vs_fp32_file']}")
    for k, v in res["greedy_tokens_vs_realm"].items():
        print(f"{k}: greedy tokens equal realm-web's for {v['equal_prefix']}/{v['of']}, "
              f"prompt ids equal: {v['prompt_ids_equal']}")


if __name__ == "__main__":
    sys.exit(main())
