"""Random PEFT LoRA adapters for any exported model, written without loading the model: the
adapter_config.json + adapter_model.safetensors that `peft.LoraConfig(...).save_pretrained`
writes (peft loads them back with `PeftModel.from_pretrained`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL = (*ATTN, "gate_proj", "up_proj", "down_proj")


def module_dims(arch: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each target module."""
    h, i, hd = arch["hidden_size"], arch["intermediate_size"], arch["head_dim"]
    q, kv = arch["num_heads"] * hd, arch["num_kv_heads"] * hd
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def write_random_adapter(out: Path, arch: dict[str, Any], *, r: int = 8, alpha: float = 16, seed: int = 0,
                         targets: tuple[str, ...] = ALL, b_scale: float = 0.02, base: str = "base") -> Path:
    """A LoRA with random A and B (B not zero, so it changes the model's answers)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    dims = module_dims(arch)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(arch["num_layers"]):
        for m in targets:
            fin, fout = dims[m]
            where = "self_attn" if m in ATTN else "mlp"
            key = f"base_model.model.model.layers.{layer}.{where}.{m}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((r, fin)) / np.sqrt(fin)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((fout, r)) * b_scale).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": r,
        "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": list(targets), "bias": "none",
        "use_rslora": False, "use_dora": False, "modules_to_save": None, "fan_in_fan_out": False,
        "rank_pattern": {}, "alpha_pattern": {}}, indent=1))
    return out
