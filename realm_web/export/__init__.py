"""Export pipeline: GGUF or Hugging Face safetensors -> ONNX decoder(s) + realm.json + tokenizer.

Needs the `export` extra (numpy, onnx, gguf); never imported by the core.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import onnx

from ..manifest import Manifest, Variant
from .config import UnsupportedModelError
from .graph import DTYPES, build_decoder, graph_spec, lora_layout
from .load import detect_format, load_source
from .packed import Origin, write_packed, write_packed_half
from .source import Source
from .weights import Q4Blocks, Q8Blocks

__all__ = ["export_model", "UnsupportedModelError", "DTYPES", "variant_file"]

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"[realm-web] {msg}", file=sys.stderr, flush=True)


def variant_file(dtype: str) -> str:
    """File names follow transformers.js: model.onnx is fp32, the others carry a suffix."""
    return "model.onnx" if dtype == "fp32" else f"model_{dtype}.onnx"


# Which export each engine loads by default.
PREFERENCES = {
    "cpu": ["int4", "int8", "fp32", "fp16"],
    "cuda": ["fp16", "fp32", "int4", "int8"],
    # onnxruntime-web's WASM build has no fast MatMulNBits (measured in Node, 1 thread: fp16 and
    # fp32 26 ms/token, int8 204, int4 259). fp32 first: its packed download is the GGUF's blocks
    # (the fp16 one's too), and it is exactly the GGUF's dequantized weights.
    "wasm": ["fp32", "fp16", "int8", "int4"],
    # WebGPU's 4-bit MatMulNBits quantizes activations (accuracy level 4) and moves logits by a few
    # tenths: enough to flip SmolLM2's knife-edge first token to French on SwiftShader; 8-bit
    # keeps the answer. fp16 first on real GPUs.
    "webgpu": ["fp16", "int8", "int4", "fp32"],
}


def _preferred_by(dtypes: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {d: [] for d in dtypes}
    for engine, order in PREFERENCES.items():
        best = next(d for d in order if d in dtypes)
        out[best].append(engine)
    return out


def _write(model: object, path: Path, say: Progress) -> None:
    tmp = path.with_suffix(".onnx.tmp")
    say(f"writing {path.name}")
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())  # type: ignore[attr-defined]
    os.replace(tmp, path)


def export_model(src: str | os.PathLike[str], out_dir: str | os.PathLike[str], dtypes: list[str] | None = None,
                 *, max_length: int | None = None, progress: Progress | None = _stderr,
                 name: str | None = None, lora_rank: int = 16,
                 merge_lora: list[str | os.PathLike[str]] | None = None, packed: bool = True) -> Manifest:
    """Export `src` into `out_dir` for each dtype; returns the manifest written there. With
    `lora_rank` (default 16; 0 for none) each dtype also gets a LoRA-capable graph that serves
    per-row adapters up to that rank (realm.json's graph.lora). `merge_lora`: adapters (PEFT
    directories or GGUF LoRA files) folded into the weights, in order. `packed`: an fp32 export
    of a block-quantized source also gets its compact download (packed.py)."""
    say = progress or (lambda _m: None)
    dtypes = list(dict.fromkeys(dtypes or ["fp32"]))
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"unknown dtype {d!r} (choose from {', '.join(DTYPES)})")
    t0 = time.perf_counter()
    detect_format(src)
    say(f"reading {src}")
    source: Source = load_source(src)
    cfg = source.config
    if merge_lora:
        from ..lora import load_adapter
        from .merge import merge_adapter

        merged: list[str] = []
        for p in merge_lora:
            say(f"merging LoRA adapter {p}")
            source.weights = merge_adapter(source.weights, load_adapter(p, cfg.to_json()), cfg.to_json())
            merged.append(str(p))
        source.origin = {**source.origin, "merged_lora": merged}
    max_len = min(max_length or cfg.max_position_embeddings, cfg.max_position_embeddings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variants: dict[str, Variant] = {}
    prefs = _preferred_by(dtypes)
    spec = graph_spec(lora_rank)
    timings: dict[str, float] = {"read_s": round(time.perf_counter() - t0, 2)}
    for d in dtypes:
        t = time.perf_counter()
        say(f"building {d} graph ({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size})")
        path = out / variant_file(d)
        origins: dict[str, Origin] = {}
        model = build_decoder(cfg, source.weights, d, max_len, spec, origins=origins)
        _write(model, path, say)
        size = path.stat().st_size
        variants[d] = Variant(dtype=d, file=path.name, bytes=size, kv_dtype="fp16" if d == "fp16" else "fp32",
                              preferred_by=prefs[d])
        lora_model = None
        if spec.lora is not None:
            lora_path = out / variant_file(d).replace(".onnx", "_lora.onnx")
            lora_model = build_decoder(cfg, source.weights, d, max_len, spec, lora_layout(spec))
            _write(lora_model, lora_path, say)
            variants[d].lora_file, variants[d].lora_bytes = lora_path.name, lora_path.stat().st_size
        if d == "fp32" and packed and any(isinstance(w, (Q4Blocks, Q8Blocks)) for w in source.weights.values()):
            say("writing the packed fp32 download (the GGUF's blocks, expanded where the model runs)")
            variants[d].packed = write_packed(model, origins, out, lora_model=lora_model)
            say(f"packed: {variants[d].packed['blocks_bytes'] / 1e6:.1f} MB of blocks for "
                f"{variants[d].packed['weights_bytes'] / 1e6:.1f} MB of fp32 weights")
        del model, lora_model
        timings[f"{d}_s"] = round(time.perf_counter() - t, 2)
        say(f"{d}: {size / 1e6:.1f} MB in {timings[f'{d}_s']:.1f} s")
    if "fp16" in variants and variants.get("fp32") is not None and variants["fp32"].packed:
        say("writing the packed fp16 download (the same blocks, rounded to fp16 where the model runs)")
        v16 = variants["fp16"]
        lora16 = onnx.load(str(out / v16.lora_file)) if v16.lora_file else None
        v16.packed = write_packed_half(onnx.load(str(out / v16.file)), variants["fp32"].packed, out, lora_model=lora16)
        del lora16
    (out / "tokenizer.json").write_text(json.dumps(source.tokenizer_json, ensure_ascii=False))
    specials = dict(source.special_tokens)
    tok_cfg = {f"{k}_token": v for k, v in specials.items()}
    tok_cfg.update({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, "clean_up_tokenization_spaces": False})
    if source.chat_template:
        (out / "chat_template.jinja").write_text(source.chat_template)
        tok_cfg["chat_template"] = source.chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False))
    manifest = Manifest(
        name=name or source.name,
        architecture=cfg.to_json(),
        variants=variants,
        graph=spec,
        tokenizer="tokenizer.json",
        chat_template="chat_template.jinja" if source.chat_template else None,
        special_tokens={**specials, "bos_token_id": source.bos_token_id},
        eos_token_ids=source.eos_token_ids,
        generation=source.generation_defaults,
        max_length=max_len,
        source={**source.origin, "export_seconds": round(time.perf_counter() - t0, 2), "timings": timings},
        directory=out,
    )
    manifest.save(out)
    say(f"done in {time.perf_counter() - t0:.1f} s: {out}")
    return manifest
