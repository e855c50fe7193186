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


# What each graph input and output is for (a layout's roles), in the order realm.json lists them.
_INPUT_ROLES = ("input_ids", "attention_mask", "past_key", "past_value", "logits_index")
_OUTPUT_ROLES = ("logits", "present_key", "present_value")
LAYOUTS = ("gqa-v1",)


LORA_FORM = "grouped-tc"


@dataclass(frozen=True)
class LoraContract:
    """How the LoRA-capable graphs (a variant's `lora_file`) take adapters, form "grouped-tc"
    (transposed, chunked): for each layer i and group g (qkv, o, gate_up, down), input
    `lora.{i}.{g}.a` (entries, 1, ranks[g], in) holds A^T of each member (q, k, v; gate, up) in
    max_rank rows apiece, and `lora.{i}.{g}.b{k}` (entries, 1, out_k, max_rank) member k's B^T
    (scale folded in), for a contiguous range of the engine's adapter table. `order` (entries,
    chunks, width) lists the flattened (row, position) indices of each entry's rows (rows x
    positions: a zero row, for padding); `inverse` (rows x positions) picks each one's result
    (entries x chunks x width: a zero row, for rows without an adapter). Engines keep width in
    [2, 16] (results are then the same whatever else a group holds, see export/graph.py)."""

    form: str = LORA_FORM
    max_rank: int = 16
    ranks: tuple[tuple[str, int], ...] = ()  # (group, table columns): members x max_rank
    order: str = "lora_order"
    inverse: str = "lora_inverse"
    a: str = "lora.{i}.{g}.a"
    b: str = "lora.{i}.{g}.b{k}"

    def rank(self, group: str) -> int:
        return dict(self.ranks)[group]

    def to_json(self) -> dict[str, Any]:
        return {"form": self.form, "max_rank": self.max_rank, "ranks": dict(self.ranks),
                "names": {"order": self.order, "inverse": self.inverse, "a": self.a, "b": self.b}}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> "LoraContract | None":
        """The contract, or None when its form is not this version's (the LoRA graphs are then
        not used: export again to serve adapters)."""
        if not isinstance(raw, dict) or raw.get("form") != LORA_FORM:
            return None
        try:
            names = raw.get("names", {})
            return cls(form=LORA_FORM, max_rank=int(raw["max_rank"]),
                       ranks=tuple((str(g), int(r)) for g, r in raw["ranks"].items()),
                       **{k: str(names[k]) for k in ("order", "inverse", "a", "b") if k in names})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelDirError(f"{where}: malformed graph lora contract ({e})") from None


@dataclass(frozen=True)
class GraphSpec:
    """The decoder graph's contract, as the exporter wrote it: the name of each input and output
    (per-layer names are templates with `{i}`) and the layout of its KV cache. Engines bind
    from this and nothing else.

    Layout "gqa-v1": `input_ids` (batch, seq) and `attention_mask` (batch, total) int64, the
    mask giving each right-padded row its valid length; `logits_index` (batch, k) int64, the
    positions of this step to compute logits for; past/present KV (batch, kv_heads, length,
    head_dim), which may share one buffer of capacity max_length (updated in place); positions
    follow from the mask."""

    layout: str = "gqa-v1"
    input_ids: str = "input_ids"
    attention_mask: str = "attention_mask"
    logits_index: str = "logits_index"
    past_key: str = "past_key_values.{i}.key"
    past_value: str = "past_key_values.{i}.value"
    logits: str = "logits"
    present_key: str = "present.{i}.key"
    present_value: str = "present.{i}.value"
    kv_share_buffer: bool = True
    lm_head_refine: int = 0  # quantized exports: lm_head candidates recomputed exactly
    lora: LoraContract | None = None  # how the variants' lora_file graphs take adapters

    def past(self, layer: int, kv: str) -> str:
        """`past_key_values.{layer}.{kv}` under this graph's names (kv: "key" or "value")."""
        return (self.past_key if kv == "key" else self.past_value).format(i=layer)

    def present(self, layer: int, kv: str) -> str:
        return (self.present_key if kv == "key" else self.present_value).format(i=layer)

    @property
    def names(self) -> dict[str, str]:
        return {r: getattr(self, r) for r in _INPUT_ROLES + _OUTPUT_ROLES}

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "names": self.names,
            "inputs": [getattr(self, r) for r in _INPUT_ROLES],
            "outputs": [getattr(self, r) for r in _OUTPUT_ROLES],
            "kv_layout": ["batch", "kv_heads", "length", "head_dim"],
            "padding": "right",  # attention_mask gives each row's length; rows are right-padded
            "kv_share_buffer": self.kv_share_buffer,  # past and present may be bound to one buffer
            "position_ids": "implicit",  # positions follow from the mask (GroupQueryAttention rotary)
            "logits_index": True,  # (batch, k) positions of this step to compute logits for
            "lm_head_refine": self.lm_head_refine,
            **({"lora": self.lora.to_json()} if self.lora is not None else {}),
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "realm.json") -> "GraphSpec":
        """Read realm.json's `graph`; a layout this realm-web cannot run is a ModelDirError."""
        if not isinstance(raw, dict):
            raise ModelDirError(f"{where}: 'graph' must be an object")
        layout = raw.get("layout")
        if layout not in LAYOUTS:
            raise ModelDirError(f"{where}: graph layout {layout!r} is not supported by this realm-web "
                                f"(it runs {', '.join(LAYOUTS)}): export the model again with this version")
        want = {"kv_layout": ["batch", "kv_heads", "length", "head_dim"], "padding": "right",
                "position_ids": "implicit", "logits_index": True}
        for key, value in want.items():
            if raw.get(key, value) != value:
                raise ModelDirError(f"{where}: graph {key} {raw.get(key)!r} is not part of layout {layout} "
                                    f"(expected {value!r})")
        names = raw.get("names")
        if names is None:  # format 2 before names were written: the lists, in role order
            ins, outs = raw.get("inputs", []), raw.get("outputs", [])
            if len(ins) != len(_INPUT_ROLES) or len(outs) != len(_OUTPUT_ROLES):
                raise ModelDirError(f"{where}: graph inputs/outputs do not match layout {layout}")
            names = dict(zip(_INPUT_ROLES + _OUTPUT_ROLES, [*ins, *outs]))
        missing = [r for r in _INPUT_ROLES + _OUTPUT_ROLES if not isinstance(names.get(r), str) or not names[r]]
        if missing:
            raise ModelDirError(f"{where}: graph names lack {', '.join(missing)}")
        for r in ("past_key", "past_value", "present_key", "present_value"):
            if "{i}" not in names[r]:
                raise ModelDirError(f"{where}: graph name {r} {names[r]!r} has no '{{i}}' for the layer")
        lora = LoraContract.from_json(raw["lora"], where) if raw.get("lora") is not None else None
        return cls(layout=layout, **{r: names[r] for r in _INPUT_ROLES + _OUTPUT_ROLES},
                   kv_share_buffer=bool(raw.get("kv_share_buffer", False)),
                   lm_head_refine=int(raw.get("lm_head_refine", 0)), lora=lora)


@dataclass
class Variant:
    """One exported graph: file name, weight dtype and which engines should prefer it."""

    dtype: str
    file: str
    bytes: int
    kv_dtype: str
    preferred_by: list[str] = field(default_factory=list)
    lora_file: str | None = None  # the same graph with per-row LoRA inputs (GraphSpec.lora)
    lora_bytes: int = 0
    # the compact download of this graph (export/packed.py): file, bytes, blocks, blocks_bytes,
    # weights, weights_bytes and, for the LoRA twin, lora_file, lora_bytes
    packed: dict[str, Any] | None = None


@dataclass
class Manifest:
    name: str
    architecture: dict[str, Any]
    variants: dict[str, Variant]
    graph: GraphSpec
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
            "graph": self.graph.to_json(),
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
            name=raw["name"], architecture=raw["architecture"], variants=variants,
            graph=GraphSpec.from_json(raw["graph"], str(f)),
            tokenizer=raw["tokenizer"], chat_template=raw.get("chat_template"),
            special_tokens=raw.get("special_tokens", {}), eos_token_ids=list(raw.get("eos_token_ids", [])),
            generation=raw.get("generation", {}), max_length=int(raw["max_length"]), source=raw.get("source", {}),
            directory=d,
        )
    except ModelDirError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # ValueError includes json.JSONDecodeError
        raise ModelDirError(f"{f}: malformed manifest ({e})") from e
