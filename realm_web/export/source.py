"""A model source, whatever its file format: config, weights, tokenizer, chat template."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ModelConfig, UnsupportedModelError
from .weights import Weight


@dataclass
class Source:
    name: str
    config: ModelConfig
    weights: dict[str, Weight]  # Hugging Face parameter names
    tokenizer_json: dict[str, Any]
    chat_template: str | None
    bos_token_id: int | None
    eos_token_ids: list[int]
    special_tokens: dict[str, str]  # bos/eos/unk/pad -> token text
    origin: dict[str, Any] = field(default_factory=dict)
    generation_defaults: dict[str, Any] = field(default_factory=dict)


def detect_format(path: str | Path) -> str:
    """"gguf" or "hf"; raises FileNotFoundError / UnsupportedModelError for anything else."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        if not (p / "config.json").exists():
            raise UnsupportedModelError(f"{p}: no config.json (expected a Hugging Face model directory or a GGUF file)")
        return "hf"
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return "gguf"
    raise UnsupportedModelError(f"{p}: not a GGUF file or a Hugging Face model directory")


def load_source(path: str | Path) -> Source:
    """Read a GGUF file or a Hugging Face directory (config.json + *.safetensors)."""
    p = Path(path)
    if detect_format(p) == "hf":
        from .hf_source import load_hf_dir

        return load_hf_dir(p)
    from .gguf_source import load_gguf

    return load_gguf(p)
