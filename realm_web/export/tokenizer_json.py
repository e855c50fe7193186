"""Build a Hugging Face tokenizer.json from the vocabulary stored in a GGUF file.

Mirrors what transformers builds from the same file (its GGUF tokenizer conversion), so that
the reference (transformers) and our pure-Python tokenizer read the same vocabulary.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import UnsupportedModelError

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp pre-tokenizer name -> split regex; any other name uses the GPT-2 ByteLevel regex.
_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT, "megrez": _QWEN2_SPLIT,
}

CONTROL, USER_DEFINED = 3, 4


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _byte_level(add_prefix_space: bool, use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": use_regex}


def byte_level_tokenizer_json(reader: Any, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(tokenizer.json as a dict, {"bos"/"eos"/"unk"/"pad": token text}) for a GGUF's vocabulary."""

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    model = field("tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedModelError(f"{path}: tokenizer type {model!r} is not supported yet (byte-level BPE 'gpt2' is)")
    tokens: list[str] = list(field("tokenizer.ggml.tokens"))
    types: list[int] = list(field("tokenizer.ggml.token_type") or [])
    merges_raw = field("tokenizer.ggml.merges")
    if not merges_raw:
        raise UnsupportedModelError(f"{path}: byte-level vocabulary without merges")
    alphabet = set(bytes_to_unicode().values())
    spelling = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        key = tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8"))
        vocab.setdefault(key, i)
    added: list[dict[str, Any]] = []
    for i, (tok, kind) in enumerate(zip(tokens, types)):
        if (kind == CONTROL and set(tok) <= alphabet) or kind == USER_DEFINED:
            added.append({
                "id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": kind == CONTROL,
            })
    split = _SPLITS.get(field("tokenizer.ggml.pre") or "")
    if split is None:
        pre: dict[str, Any] = _byte_level(False, True)
    else:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
            _byte_level(False, False),
        ]}
    specials: dict[str, str] = {}
    for name in ("bos", "eos", "unknown", "padding"):
        tid = field(f"tokenizer.ggml.{name}_token_id")
        if tid is not None and 0 <= int(tid) < len(tokens):
            specials[{"unknown": "unk", "padding": "pad"}.get(name, name)] = tokens[int(tid)]
    single: list[dict[str, Any]] = [{"Sequence": {"id": "A", "type_id": 0}}]
    special_map: dict[str, Any] = {}
    if field("tokenizer.ggml.add_bos_token") and "bos" in specials:
        bos = specials["bos"]
        single = [{"SpecialToken": {"id": bos, "type_id": 0}}] + single
        special_map[bos] = {"id": bos, "ids": [vocab.get(bos, tokens.index(bos))], "tokens": [bos]}
    data: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": single,
            "pair": single + [{"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": special_map,
        },
        "decoder": _byte_level(True, True),
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab,
            "merges": [m.split(" ") for m in merges_raw],
        },
    }
    return data, specials
