"""A model source, whatever its file format: config, weights, tokenizer, chat template.
(export/load.py reads one; hf_source.py and gguf_source.py make one.)"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import ModelConfig
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
