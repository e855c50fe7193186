"""Read a Hugging Face model directory: config.json, *.safetensors, tokenizer files."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .config import SUPPORTED_ARCHITECTURES, ModelConfig, UnsupportedModelError
from .source import Source
from .weights import Weight

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of one .safetensors file as float32 arrays (bf16 widened exactly)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _DTYPES:
            raise UnsupportedModelError(f"{path}: tensor {name} has unsupported dtype {dt}")
        start, end = info["data_offsets"]
        raw = np.frombuffer(mm[base + start: base + end], dtype=_DTYPES[dt]).reshape(info["shape"])
        if dt == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.astype(np.float32)
        out[name] = arr
    return out


def _config(raw: dict[str, Any], path: Path) -> ModelConfig:
    arch = raw.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: model_type {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    rope = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise UnsupportedModelError(f"{path}: RoPE scaling {scaling!r} is not supported yet")
    heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    return ModelConfig(
        architecture=arch,
        num_layers=int(raw["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        vocab_size=int(raw["vocab_size"]),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        # transformers 5 keeps theta under rope_parameters; older configs at the top level.
        rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=bool(raw.get("attention_bias", arch == "qwen2")),
    )


def load_hf_dir(path: Path) -> Source:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise UnsupportedModelError(f"{path}: no config.json (expected a Hugging Face model directory or a GGUF file)")
    raw = json.loads(cfg_file.read_text())
    cfg = _config(raw, path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(f"{path}: no *.safetensors weights")
    weights: dict[str, Weight] = {}
    for f in files:
        weights.update(read_safetensors(f))
    if "lm_head.weight" not in weights:
        cfg.tie_word_embeddings = True
    tok_file = path / "tokenizer.json"
    if not tok_file.exists():
        raise UnsupportedModelError(f"{path}: no tokenizer.json")
    tok_json = json.loads(tok_file.read_text())
    tok_cfg: dict[str, Any] = {}
    if (path / "tokenizer_config.json").exists():
        tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    template = None
    if (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    elif isinstance(tok_cfg.get("chat_template"), str):
        template = tok_cfg["chat_template"]
    gen: dict[str, Any] = {}
    if (path / "generation_config.json").exists():
        gen = json.loads((path / "generation_config.json").read_text())
    eos = gen.get("eos_token_id", raw.get("eos_token_id"))
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]

    def tok_text(v: Any) -> str | None:
        return v.get("content") if isinstance(v, dict) else v

    specials = {k: str(tok_text(tok_cfg.get(f"{k}_token"))) for k in ("bos", "eos", "unk", "pad") if tok_text(tok_cfg.get(f"{k}_token"))}
    defaults = {k: gen[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty") if k in gen}
    bos = raw.get("bos_token_id")
    return Source(
        name=path.name, config=cfg, weights=weights, tokenizer_json=tok_json, chat_template=template,
        bos_token_id=int(bos) if isinstance(bos, int) else None, eos_token_ids=eos_ids,
        special_tokens=specials, origin={"format": "safetensors", "dir": path.name},
        generation_defaults=defaults,
    )
