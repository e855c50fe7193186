"""Read a Llama-family GGUF file: architecture, weights (kept in their quantized blocks), tokenizer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import SUPPORTED_ARCHITECTURES, ModelConfig, UnsupportedModelError
from .source import Source
from .tokenizer_json import byte_level_tokenizer_json
from .weights import Q4Blocks, Q8Blocks, Weight, unpermute_rope_rows

# GGUF tensor name -> Hugging Face parameter name (per layer names use {i}).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _read_tensor(t: Any) -> Weight:
    import gguf

    kind = t.tensor_type
    rows = int(t.shape[-1]) if len(t.shape) > 1 else int(t.shape[0])
    if kind == gguf.GGMLQuantizationType.F32:
        return np.asarray(t.data, dtype=np.float32).reshape(list(reversed([int(x) for x in t.shape])))
    if kind in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
        return gguf.quants.dequantize(t.data, kind).astype(np.float32).reshape(list(reversed([int(x) for x in t.shape])))
    raw = np.asarray(t.data, dtype=np.uint8).reshape(rows, -1)
    cols = int(t.shape[0])
    nb = cols // 32
    if kind == gguf.GGMLQuantizationType.Q4_1:
        blocks = raw.reshape(rows, nb, 20)
        d = blocks[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        m = blocks[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        qs = blocks[:, :, 4:20]
        # llama.cpp layout: byte j holds element j (low nibble) and element j + 16 (high nibble).
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(rows, cols)
        return Q4Blocks(q=q.astype(np.uint8), d=d, m=m)
    if kind == gguf.GGMLQuantizationType.Q8_0:
        blocks = raw.reshape(rows, nb, 34)
        d = blocks[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        q = blocks[:, :, 2:34].copy().view(np.int8).reshape(rows, cols)
        return Q8Blocks(q=q, d=d)
    # Any other quantization: dequantize with the gguf package (exact, like transformers does).
    return gguf.quants.dequantize(t.data, kind).astype(np.float32).reshape(rows, cols)


def load_gguf(path: Path) -> Source:
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - export extra missing
        raise RuntimeError("exporting a GGUF needs the 'gguf' package: pip install 'realm-web[export]'") from e
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise UnsupportedModelError(f"{path}: not a readable GGUF file ({e})") from e
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    p = f"{arch}."
    n_embd = int(_field(reader, p + "embedding_length"))
    n_head = int(_field(reader, p + "attention.head_count"))
    n_kv = int(_field(reader, p + "attention.head_count_kv", n_head))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    tensors = {t.name: t for t in reader.tensors}
    cfg = ModelConfig(
        architecture=arch,
        num_layers=int(_field(reader, p + "block_count")),
        hidden_size=n_embd,
        intermediate_size=int(_field(reader, p + "feed_forward_length")),
        num_heads=n_head,
        num_kv_heads=n_kv,
        head_dim=int(_field(reader, p + "attention.key_length", n_embd // n_head)),
        vocab_size=int(_field(reader, p + "vocab_size", len(tokens) if tokens else 0)),
        rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)),
        max_position_embeddings=int(_field(reader, p + "context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
    )
    if _field(reader, p + "rope.scaling.type") not in (None, "none"):
        raise UnsupportedModelError(f"{path}: RoPE scaling {_field(reader, p + 'rope.scaling.type')!r} is not supported yet")
    weights: dict[str, Weight] = {}
    for name, t in tensors.items():
        if name.startswith("blk."):
            _, idx, rest = name.split(".", 2)
            if rest not in _LAYER_NAMES:
                raise UnsupportedModelError(f"{path}: unexpected tensor {name!r} for a Llama-family model")
            hf = f"model.layers.{idx}.{_LAYER_NAMES[rest]}"
        elif name in _GLOBAL_NAMES:
            hf = _GLOBAL_NAMES[name]
        elif name == "rope_freqs.weight":
            raise UnsupportedModelError(f"{path}: rope frequency factors (Llama 3.1 scaling) are not supported yet")
        else:
            raise UnsupportedModelError(f"{path}: unexpected tensor {name!r}")
        w = _read_tensor(t)
        if arch == "llama" and rest_is(name, "attn_q.weight"):
            w = unpermute_rope_rows(w, n_head)
        elif arch == "llama" and rest_is(name, "attn_k.weight"):
            w = unpermute_rope_rows(w, n_kv)
        elif arch == "llama" and (rest_is(name, "attn_q.bias") or rest_is(name, "attn_k.bias")):
            raise UnsupportedModelError(f"{path}: q/k biases on a llama GGUF are not supported")
        weights[hf] = w
    tok_json, specials = byte_level_tokenizer_json(reader, path)
    template = _field(reader, "tokenizer.chat_template")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    return Source(
        name=str(_field(reader, "general.name", path.stem)),
        config=cfg,
        weights=weights,
        tokenizer_json=tok_json,
        chat_template=str(template) if template else None,
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_ids=[int(eos)] if eos is not None else [],
        special_tokens=specials,
        origin={"format": "gguf", "file": path.name, "file_type": int(_field(reader, "general.file_type", -1))},
    )


def rest_is(name: str, suffix: str) -> bool:
    return name.startswith("blk.") and name.split(".", 2)[2] == suffix
