"""A transformers.js model directory over realm-web's fp16 export, for bench/transformersjs_webgpu.mjs:
config.json (LlamaForCausalLM), generation_config.json, the tokenizer files, and onnx/model_fp16.onnx:
the fp16 packed graph (model_fp16_packed.onnx) with logits for every position (no logits_index input:
transformers.js feeds input_ids, attention_mask and past_key_values.* only) and its weights named
model_fp16.onnx_data, the file transformers.js fetches with use_external_data_format. The weights
file itself is packed.mjs's fp16 expansion of model_packed.blocks (made by the bench on the device,
or with --weights here). The same fp16 weights and kernels as onnxruntime-web's run of our graph.
    .venv/bin/python bench/transformersjs_model.py MODEL_DIR OUT_DIR [--weights]"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import onnx


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    man = json.loads((src / "realm.json").read_text())
    a, p = man["architecture"], man["variants"]["fp16"]["packed"]
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    m = onnx.load(str(src / p["file"]), load_external_data=False)
    g = m.graph
    gather = next(n for n in g.node if n.op_type == "GatherND")
    unsq = next(n for n in g.node if n.op_type == "Unsqueeze" and n.output[0] == gather.input[1])
    for n in g.node:  # the lm_head reads the hidden states of every position
        for i, x in enumerate(n.input):
            if x == gather.output[0]:
                n.input[i] = gather.input[0]
    g.node.remove(gather)
    g.node.remove(unsq)
    keep = [i for i in g.input if i.name != "logits_index"]
    del g.input[:]
    g.input.extend(keep)
    g.output[0].type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    for t in g.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "model_fp16.onnx_data"
    onnx.save(m, str(out / "onnx" / "model_fp16.onnx"))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a["hidden_size"],
           "intermediate_size": a["intermediate_size"], "num_hidden_layers": a["num_layers"],
           "num_attention_heads": a["num_heads"], "num_key_value_heads": a["num_kv_heads"], "head_dim": a["head_dim"],
           "vocab_size": a["vocab_size"], "rms_norm_eps": a["rms_norm_eps"], "rope_theta": a["rope_theta"],
           "max_position_embeddings": a["max_position_embeddings"], "tie_word_embeddings": a["tie_word_embeddings"],
           "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    # no end-of-sequence id in the vocabulary: the bench compares 65 greedy tokens whatever they are
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [a["vocab_size"] + 7]}))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, out / f)
    if "--weights" in sys.argv:
        from realm_web.export.packed import expand_weights
        (out / "onnx" / "model_fp16.onnx_data").write_bytes(expand_weights(src / p["blocks"], p))
    print(out)


if __name__ == "__main__":
    main()
