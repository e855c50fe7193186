"""Multi-LoRA serving throughput: aggregate decode tokens/s of --requests concurrent requests
(realm-web's LLM, continuous batching) on the base model, with adapters loaded but unused, on 1,
4 and 8 distinct adapters (ranks --ranks, all seven targets), against the same requests on an
export with the adapter merged into the weights (`realm-web export --merge-lora`: the ceiling)
and against peft/transformers (`generate(adapter_names=...)`, its mixed-adapter batch). All in
one run; the ratios are to "base" of the same run.

Decode rate = requests x --new / (T(1 + --new tokens) - T(1 token)): the prompt's prefill falls
in both and cancels; an untimed call first makes the configuration's adapters resident. Every configuration runs once per round, --reps rounds
round robin (drift hits all alike); medians.

    .venv/bin/python bench/lora.py [--device cpu|cuda] [--dtype int4] [--requests 16] [--new 64]
        [--ranks 8,16] [--reps 3] [--anchors merged,peft] [--out bench/results/lora_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

TOPICS = ["the ocean", "volcanoes", "the moon", "honeybees", "glaciers", "the Roman empire", "jazz", "chess",
          "rainforests", "the printing press", "black holes", "coffee", "deserts", "electric cars", "tea", "owls"]


def say(msg: str) -> None:
    print(f"[bench/lora] {msg}", file=sys.stderr, flush=True)


def prompts(n: int) -> list[str]:
    return [f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def decode_rate(run: Callable[[int], None], requests: int, new: int) -> tuple[float, float]:
    """(T(1) seconds, T(1 + new) seconds) of one call each, after an untimed call that makes the
    configuration's adapters resident (their uploads are not decode)."""
    run(1)
    t0 = time.perf_counter()
    run(1)
    t1 = time.perf_counter()
    run(1 + new)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def realm_runner(llm: Any, texts: list[str], adapters: list[str | None]) -> Callable[[int], None]:
    from realm_web import SamplingParams

    def run(n: int) -> None:
        out = llm.generate(texts, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True), adapter=adapters)
        assert all(len(c.token_ids) == n for c in out), [len(c.token_ids) for c in out]
    return run


def peft_runner(model: Any, ids: list[list[int]], names: list[str] | None, device: str) -> Callable[[int], None]:
    import torch

    from anchors import left_pad

    x, mask = left_pad(ids)
    xt, mt = torch.tensor(x, device=device), torch.tensor(mask, device=device)

    def run(n: int) -> None:
        kw: dict[str, Any] = {"adapter_names": names} if names is not None else {}
        with torch.no_grad():
            out = model.generate(input_ids=xt, attention_mask=mt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=2, **kw)
        assert out.shape[1] == xt.shape[1] + n
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the pulled default model)")
    ap.add_argument("--gguf", default=None, help="its source GGUF (for the merged export and transformers)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="default: int4 on cpu, fp16 on cuda")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new", type=int, default=64, help="decode tokens per request")
    ap.add_argument("--anchor-new", type=int, default=None, help="decode tokens for the peft/transformers anchor "
                    "(default --new; it is a rate, fewer tokens only shorten a slow anchor)")
    ap.add_argument("--ranks", default="8,16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--anchors", default="merged,peft", help="comma list of merged, peft (or none)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma list: run only configurations whose name starts so "
                    "(\"base\" is always run: the anchor)")
    ap.add_argument("--work", default="/tmp/realm-bench-lora")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    from adapters import write_random_adapter
    from realm_web import LLM, load_manifest
    from realm_web.export.pull import default_gguf_path
    from realm_web.paths import default_model_dir

    dtype = a.dtype or ("fp16" if a.device == "cuda" else "int4")
    model = Path(a.model) if a.model else default_model_dir()
    gguf = Path(a.gguf) if a.gguf else default_gguf_path()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    arch = load_manifest(model).architecture
    ranks = [int(r) for r in a.ranks.split(",")]
    anchors = {x for x in a.anchors.split(",") if x and x != "none"}
    n, texts = a.requests, prompts(a.requests)
    paths: dict[int, list[Path]] = {}
    for r in ranks:  # 8 adapters per rank, all seven targets; scale as a trained adapter's
        paths[r] = [write_random_adapter(work / f"r{r}-{k}", arch, r=r, alpha=2 * r, seed=100 * r + k, b_scale=0.02)
                    for k in range(8)]

    kw: dict[str, Any] = {"dtype": dtype, "max_slots": n, "max_length": 512, "device": a.device, "max_loras": 8}
    if a.threads:
        kw["threads"] = a.threads
    say(f"loading {model} ({dtype}, {a.device})")
    base_llm = LLM(model, **kw)  # never sees an adapter
    llm = LLM(model, **kw)
    for r in ranks:
        for k, p in enumerate(paths[r]):
            llm.load_adapter(f"r{r}-{k}", p)

    configs: dict[str, Callable[[int], None]] = {"base": realm_runner(base_llm, texts, [None] * n)}
    for r in ranks:
        for m in (1, 4, 8):
            configs[f"r{r}, {m} adapter{'s' if m > 1 else ''}"] = realm_runner(
                llm, texts, [f"r{r}-{i % m}" for i in range(n)])
    configs["base, adapters loaded (unused)"] = realm_runner(llm, texts, [None] * n)
    notes: dict[str, str] = {}

    if "merged" in anchors:
        for r in ranks:
            out = work / f"merged-{dtype}-r{r}"
            if not (out / "realm.json").exists():
                say(f"exporting {dtype} with r{r}-0 merged into the weights")
                subprocess.run([sys.executable, "-m", "realm_web.cli", "export", str(gguf), "-o", str(out), "--dtype",
                                dtype, "--lora-rank", "0", "--merge-lora", str(paths[r][0]), "--max-length", "512", "-q"],
                               check=True)
            configs[f"merged r{r} (ceiling of 1 adapter)"] = realm_runner(LLM(out, **kw), texts, [None] * n)
    if "peft" in anchors:
        import torch
        from peft import PeftModel

        from anchors import hf_dir_from_gguf, load_hf

        if a.device == "cpu" and a.threads:
            torch.set_num_threads(a.threads)
        hf = load_hf(hf_dir_from_gguf(gguf, work / "hf"), a.device, "fp16" if dtype == "fp16" else "fp32")
        ids = [llm.encode_prompt(t) for t in texts]
        configs["transformers base"] = peft_runner(hf, ids, None, a.device)
        r = max(ranks)
        pm = PeftModel.from_pretrained(hf, str(paths[r][0]), adapter_name=f"r{r}-0")
        for k in range(1, 8):
            pm.load_adapter(str(paths[r][k]), adapter_name=f"r{r}-{k}")
        pm.eval()
        for m in (1, 8):
            configs[f"peft r{r}, {m} adapter{'s' if m > 1 else ''}"] = peft_runner(
                pm, ids, [f"r{r}-{i % m}" for i in range(n)], a.device)
        notes["peft"] = f"transformers {'fp16' if dtype == 'fp16' else 'fp32'} (eager), peft mixed batch (adapter_names)"

    if a.only:
        keep = [x.strip() for x in a.only.split(",")]
        configs = {k: v for k, v in configs.items() if k == "base" or any(k.startswith(x) for x in keep)}
    warm = [f"r{r}-{k}" for r in ranks for k in range(4)][:n]
    realm_runner(llm, texts[: len(warm)], warm)(2)  # its LoRA graph and tables exist, as after real use
    say(f"warming up {len(configs)} configurations")
    for name, run in configs.items():
        run(2)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in configs}
    anchor_new = a.anchor_new or a.new
    new_of = {k: anchor_new if k.startswith(("peft", "transformers")) else a.new for k in configs}
    for rep in range(a.reps):
        for name, run in configs.items():
            times[name].append(decode_rate(run, n, new_of[name]))
        say(f"round {rep + 1}/{a.reps} done")

    rows: dict[str, dict[str, Any]] = {}
    for name, ts in times.items():
        t1, tn = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        rows[name] = {"decode_tok_s": round(n * new_of[name] / (tn - t1), 1), "t1_s": round(t1, 3),
                      "t_new_s": round(tn, 3), "new": new_of[name]}
    base = rows["base"]["decode_tok_s"]
    for name, row in rows.items():
        row["vs_base"] = round(row["decode_tok_s"] / base, 3)
    for r in ranks:
        key = f"merged r{r} (ceiling of 1 adapter)"
        if key in rows:
            for m in (1, 4, 8):
                rows[f"r{r}, {m} adapter{'s' if m > 1 else ''}"]["vs_merged"] = round(
                    rows[f"r{r}, {m} adapter{'s' if m > 1 else ''}"]["decode_tok_s"] / rows[key]["decode_tok_s"], 3)
    for name, row in rows.items():
        if name.startswith("peft r"):
            ours = rows[name.replace("peft ", "")]["decode_tok_s"]
            row["realm_vs_this"] = round(ours / row["decode_tok_s"], 2)
    if "transformers base" in rows:
        rows["transformers base"]["realm_vs_this"] = round(base / rows["transformers base"]["decode_tok_s"], 2)

    env = {"device": a.device, "dtype": dtype, "requests": n, "new": a.new, "reps": a.reps, "ranks": ranks,
           "model": str(model), "threads": a.threads or os.cpu_count(), "python": platform.python_version(),
           "machine": platform.machine(), "cpus": os.cpu_count(), "notes": notes,
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    print(f"\nmulti-LoRA decode, {n} concurrent requests x {a.new} tokens, {a.device} {dtype} (medians of {a.reps})")
    print(f"{'configuration':40s} {'tok/s':>9s} {'vs base':>8s} {'vs merged':>10s} {'realm-web vs':>13s}")
    for name, row in rows.items():
        print(f"{name:40s} {row['decode_tok_s']:9.1f} {row['vs_base']:8.3f} {row.get('vs_merged', ''):>10} "
              f"{row.get('realm_vs_this', ''):>13}")
    out = Path(a.out or ROOT / "bench" / "results" / f"lora_{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
