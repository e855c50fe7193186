"""Multi-LoRA exactness on a device where kernels need not be batch-invariant (CUDA fp16): counts,
not assertions. Random PEFT adapters (all seven targets) on the default model:

* mixed == alone: --requests prompts over 4 adapters and the base, greedy and seeded, run together
  against each alone (CUDA graphs on), and the same with CUDA graphs off;
* base rows of the mixed batch against an engine that never loaded an adapter;
* greedy ids with an adapter against transformers + peft on the same device and dtype.

    python bench/lora_check.py --device cuda --dtype fp16 --model DIR [--gguf PATH] --out lora_check.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--peft", type=int, default=8, help="prompts checked against peft (0: none)")
    ap.add_argument("--logits", action="store_true", help="also compare prompt logits with peft in fp32")
    ap.add_argument("--work", default="/tmp/realm-lora-check")
    ap.add_argument("--out", default="lora_check.json")
    a = ap.parse_args()

    from adapters import write_random_adapter
    from realm_web import LLM, SamplingParams, load_manifest
    from realm_web.export.pull import default_gguf_path
    from realm_web.paths import default_model_dir

    dtype = a.dtype or ("fp16" if a.device == "cuda" else "int4")
    model = Path(a.model) if a.model else default_model_dir()
    work = Path(a.work)
    arch = load_manifest(model).architecture
    paths = [write_random_adapter(work / f"a{k}", arch, r=16, alpha=32, seed=10 + k, b_scale=0.08) for k in range(4)]
    topics = ["the ocean", "volcanoes", "the moon", "honeybees", "glaciers", "jazz", "chess", "coffee"]
    prompts = [f"Tell me {['one fact', 'a short story', 'a joke', 'two facts'][i % 4]} about {topics[i % 8]}."
               for i in range(a.requests)]
    names: list[str | None] = [None if i % 5 == 4 else f"a{i % 5}" for i in range(a.requests)]
    greedy = SamplingParams(max_tokens=a.new, temperature=0, ignore_eos=True)
    seeded = SamplingParams(max_tokens=a.new, temperature=0.8, top_p=0.95, seed=7, ignore_eos=True)
    report: dict[str, Any] = {"device": a.device, "dtype": dtype, "requests": a.requests, "new": a.new}

    def run(cuda_graph: bool | None) -> dict[str, Any]:
        kw: dict[str, Any] = {"dtype": dtype, "device": a.device, "max_slots": a.requests, "max_length": 512}
        if a.device == "cuda":
            kw["cuda_graph"] = cuda_graph
        t = time.time()
        llm = LLM(model, **kw)
        for k, p in enumerate(paths):
            llm.load_adapter(f"a{k}", p)
        load_s = time.time() - t
        res: dict[str, Any] = {"load_s": round(load_s, 1)}
        for label, sp in (("greedy", greedy), ("seeded", seeded)):
            alone = [llm.generate(p, sp, adapter=n)[0].token_ids for p, n in zip(prompts, names)]
            together = [c.token_ids for c in llm.generate(prompts, sp, adapter=names)]
            res[label] = {"identical": sum(x == y for x, y in zip(alone, together)), "of": len(prompts),
                          "adapter_changes_answers": sum(alone[i] != alone[j] for i in range(len(prompts))
                                                         for j in range(len(prompts)) if prompts[i] == prompts[j]
                                                         and names[i] != names[j])}
            res[f"{label}_together"] = together
            res[f"{label}_alone"] = alone
        eng = llm.engine
        res["lora_decode_static"] = sorted(r for r, lora in getattr(eng, "_static", {}) if lora)
        res["lora_cuda_graphs"] = bool(getattr(eng, "cuda_graph", False) and getattr(eng, "_lora_static", False))
        llm.close()
        return res

    report["cuda_graph"] = run(True)
    print("graphs on:", {k: v for k, v in report["cuda_graph"].items() if not k.endswith(("_together", "_alone"))})
    if a.device == "cuda":
        report["no_graph"] = run(False)
        print("graphs off:", {k: v for k, v in report["no_graph"].items() if not k.endswith(("_together", "_alone"))})
        g, ng = report["cuda_graph"]["greedy_together"], report["no_graph"]["greedy_together"]
        report["graph_vs_no_graph_greedy_identical"] = sum(x == y for x, y in zip(g, ng))
    plain = LLM(model, dtype=dtype, device=a.device, max_slots=a.requests, max_length=512)
    base_rows = [i for i, n in enumerate(names) if n is None]
    ref = [c.token_ids for c in plain.generate([prompts[i] for i in base_rows], greedy)]
    mixed = report["cuda_graph"]["greedy_together"]
    report["base_rows_vs_no_adapters"] = {"identical": sum(mixed[i] == r for i, r in zip(base_rows, ref)),
                                          "of": len(base_rows)}
    print("base rows vs an engine without adapters:", report["base_rows_vs_no_adapters"])
    ids = [plain.encode_prompt(p) for p in prompts]
    plain.close()

    if a.peft:
        import torch
        from peft import PeftModel

        from anchors import hf_dir_from_gguf, load_hf

        gguf = Path(a.gguf) if a.gguf else default_gguf_path()
        hf = load_hf(hf_dir_from_gguf(gguf, work / "hf"), a.device, "fp16" if dtype == "fp16" else "fp32")

        def hf_greedy(m: Any, i: int) -> list[int]:
            with torch.no_grad():
                return m.generate(torch.tensor([ids[i]], device=a.device), max_new_tokens=a.new, do_sample=False,
                                  pad_token_id=2, min_new_tokens=a.new)[0, len(ids[i]):].tolist()

        # the same comparison without an adapter, for scale: how often do the two fp16 models agree at all
        base_same = sum(hf_greedy(hf, i) == r for i, r in zip(base_rows, ref))
        report["base_vs_transformers"] = {"identical": base_same, "of": len(base_rows)}
        print("base greedy ids vs transformers:", report["base_vs_transformers"])
        pm = PeftModel.from_pretrained(hf, str(paths[0]), adapter_name="a0").eval()
        rows = [i for i, n in enumerate(names) if n == "a0"][: a.peft]
        same = 0
        prefix = []
        for i in rows:
            out = hf_greedy(pm, i)
            ours = report["cuda_graph"]["greedy_alone"][i]
            same += out == ours
            prefix.append(next((j for j, (x, y) in enumerate(zip(out, ours)) if x != y), len(ours)))
        report["vs_peft"] = {"identical": same, "of": len(rows), "common_prefix": prefix,
                             "peft_dtype": "fp16" if dtype == "fp16" else "fp32"}
        print("greedy ids on adapter a0 vs transformers+peft:", report["vs_peft"])
        if a.logits:  # prompt logits on a0: ours and peft's in this dtype, each against peft in fp32
            import numpy as np

            llm = LLM(model, dtype=dtype, device=a.device, max_slots=2, max_length=512)
            llm.load_adapter("a0", paths[0])
            llm.generate(prompts[rows[0]], SamplingParams(max_tokens=1), adapter="a0")  # uploads it
            entry = llm.scheduler.router.entry["a0"]
            hf32 = PeftModel.from_pretrained(load_hf(work / "hf", a.device, "fp32"), str(paths[0])).eval()
            worst: dict[str, float] = {"ours": 0.0, "peft": 0.0}
            for i in rows:
                x = torch.tensor([ids[i]], device=a.device)
                with torch.no_grad():
                    ref = hf32(x).logits[0].float().cpu().numpy()
                    theirs = pm(x).logits[0].float().cpu().numpy()
                ours = llm.engine.prompt_logits(ids[i], 0, entry).astype(np.float32)
                worst["ours"] = max(worst["ours"], float(np.abs(ours - ref).max()))
                worst["peft"] = max(worst["peft"], float(np.abs(theirs - ref).max()))
            report["logits_vs_peft_fp32"] = {"max_abs_ours": round(worst["ours"], 4),
                                             "max_abs_peft_same_dtype": round(worst["peft"], 4), "prompts": len(rows)}
            print("prompt logits vs peft fp32 (max abs):", report["logits_vs_peft_fp32"])
            llm.close()
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
