"""Greedy tokens of onnxruntime's CPU EP for bench/webgpu_node.mjs's prompt, fp32 and fp16 exports,
as the reference the WebGPU runs on the lent GPU compare with (that machine has no onnxruntime):
    .venv/bin/python bench/webgpu_cpu_ref.py MODEL_DIR OUT_JSON [STEPS [ADAPTER_DIR]]
With ADAPTER_DIR (a PEFT directory; a random rank-8 adapter on q, k, v and o is written there when
it does not exist), also the native fp32 engine's greedy tokens on that adapter ("fp32_lora"), and
the adapter as the bridge's upload takes it (lora_meta.json, lora.bin beside OUT_JSON) for
bench/webgpu_node.mjs's LORA runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2]


def greedy(path: str, steps: int, layers: int, kv_heads: int, head_dim: int, half: bool) -> list[int]:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ft = np.float16 if half else np.float32
    past = {f"past_key_values.{i}.{k}": np.zeros((1, kv_heads, 0, head_dim), ft) for i in range(layers) for k in ("key", "value")}
    names = [o.name for o in s.get_outputs()]
    ids, start, out = PROMPT, 0, []
    for _ in range(steps + 1):
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, start + len(ids)), np.int64),
                 "logits_index": np.array([[len(ids) - 1]], np.int64), **past}
        res = dict(zip(names, s.run(None, feeds)))
        past = {f"past_key_values.{i}.{k}": res[f"present.{i}.{k}"] for i in range(layers) for k in ("key", "value")}
        start += len(ids)
        ids = [int(np.argmax(res["logits"][0, -1].astype(np.float32)))]
        out.append(ids[0])
    return out


def lora_greedy(model: str, adapter: Path, steps: int, into: Path) -> list[int]:
    """The native fp32 engine's greedy tokens for PROMPT on `adapter`; the adapter's upload form
    (realm_web.engines.ort_web.adapter_blob) written into `into`."""
    from realm_web import LLM
    from realm_web.engines.ort_web import adapter_blob
    from realm_web.lora import load_adapter

    if not adapter.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from adapters import write_random_adapter

        arch = json.load(open(f"{model}/realm.json"))["architecture"]
        write_random_adapter(adapter, arch, r=8, alpha=16, seed=3, b_scale=0.1,
                             targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    llm = LLM(model, dtype="fp32", max_slots=1, max_length=256)
    llm.load_adapter("lora", adapter)
    tokens = llm.generate(PROMPT, max_tokens=steps + 1, ignore_eos=True, adapter="lora")[0].token_ids
    llm.close()
    meta, blob = adapter_blob(load_adapter(adapter, json.load(open(f"{model}/realm.json"))["architecture"], name="lora"))
    (into / "lora_meta.json").write_text(meta)
    (into / "lora.bin").write_bytes(blob)
    return tokens


def main() -> None:
    model, out = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    arch = json.load(open(f"{model}/realm.json"))["architecture"]
    dims = (arch["num_layers"], arch["num_kv_heads"], arch["head_dim"])
    ref = {"prompt": PROMPT, "fp32": greedy(f"{model}/model.onnx", steps, *dims, half=False),
           "fp16": greedy(f"{model}/model_fp16.onnx", steps, *dims, half=True)}
    if len(sys.argv) > 4:
        ref["fp32_lora"] = lora_greedy(model, Path(sys.argv[4]), steps, Path(out).parent)
    json.dump(ref, open(out, "w"))
    print(json.dumps(ref))


if __name__ == "__main__":
    main()
