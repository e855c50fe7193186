"""realm.json: the only contract between the exporter and the engines.

The exporter writes it; an engine reads it and the files it names, nothing else.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "realm.json"
FORMAT_VERSION = 2  # 2: logits_index replaces num_logits_to_keep


class ModelDirError(ValueError):
    """A directory that is not a usable realm-web model directory."""


@dataclass
class Variant:
    """One exported graph: file name, weight dtype and which engines should prefer it."""

    dtype: str
    file: str
    bytes: int
    kv_dtype: str
    preferred_by: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    name: str
    architecture: dict[str, Any]
    variants: dict[str, Variant]
    graph: dict[str, Any]
    tokenizer: str
    chat_template: str | None
    special_tokens: dict[str, Any]
    eos_token_ids: list[int]
    generation: dict[str, Any]
    max_length: int
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    directory: Path = field(default=Path("."), compare=False)

    @property
    def num_layers(self) -> int:
        return int(self.architecture["num_layers"])

    @property
    def num_kv_heads(self) -> int:
        return int(self.architecture["num_kv_heads"])

    @property
    def head_dim(self) -> int:
        return int(self.architecture["head_dim"])

    @property
    def vocab_size(self) -> int:
        return int(self.architecture["vocab_size"])

    def variant_for(self, engine: str, dtype: str | None = None) -> Variant:
        """The variant `engine` should load: the one asked for, else the one the exporter chose for it."""
        if dtype is not None:
            if dtype not in self.variants:
                raise ModelDirError(f"{self.directory}: no {dtype} export (have: {', '.join(sorted(self.variants))})")
            return self.variants[dtype]
        for v in self.variants.values():
            if engine in v.preferred_by:
                return v
        return next(iter(self.variants.values()))

    def path(self, name: str) -> Path:
        return self.directory / name

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "architecture": self.architecture,
            "variants": {k: vars(v) for k, v in self.variants.items()},
            "graph": self.graph,
            "tokenizer": self.tokenizer,
            "chat_template": self.chat_template,
            "special_tokens": self.special_tokens,
            "eos_token_ids": self.eos_token_ids,
            "generation": self.generation,
            "max_length": self.max_length,
            "source": self.source,
        }

    def save(self, directory: str | os.PathLike[str]) -> None:
        Path(directory, MANIFEST).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def load_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read `directory/realm.json`; raises ModelDirError with a clear message when it is not a model."""
    d = Path(directory)
    if not d.exists():
        raise ModelDirError(f"{d}: no such model directory")
    if not d.is_dir():
        raise ModelDirError(f"{d}: not a directory (a model directory holds realm.json and model files)")
    f = d / MANIFEST
    if not f.exists():
        raise ModelDirError(f"{d}: not a realm-web model directory (no {MANIFEST}; make one with `realm-web export`)")
    try:
        raw = json.loads(f.read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise ModelDirError(f"{f}: unsupported format_version {raw.get('format_version')!r}")
        variants = {k: Variant(**v) for k, v in raw["variants"].items()}
        return Manifest(
            name=raw["name"], architecture=raw["architecture"], variants=variants, graph=raw["graph"],
            tokenizer=raw["tokenizer"], chat_template=raw.get("chat_template"),
            special_tokens=raw.get("special_tokens", {}), eos_token_ids=list(raw.get("eos_token_ids", [])),
            generation=raw.get("generation", {}), max_length=int(raw["max_length"]), source=raw.get("source", {}),
            directory=d,
        )
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{f}: malformed manifest ({e})") from e
