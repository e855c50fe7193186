"""Read a model source of either format: a GGUF file or a Hugging Face directory."""
from __future__ import annotations

from pathlib import Path

from .config import UnsupportedModelError
from .gguf_source import load_gguf
from .hf_source import load_hf_dir
from .source import Source


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
        return load_hf_dir(p)
    return load_gguf(p)
