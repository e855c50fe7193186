"""Architecture numbers of a Llama-family decoder, as read from a GGUF or a config.json."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class UnsupportedModelError(ValueError):
    """The source is not a model this exporter knows how to convert."""


SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral")


@dataclass
class ModelConfig:
    architecture: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool = False  # q/k/v biases (Qwen2)
    rope_scaling: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
