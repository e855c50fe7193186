"""Shared fixtures.

`model_dir` is the default model made by `realm-web pull` (run once, cached). Set
REALM_WEB_TEST_MODEL to use another model directory, REALM_WEB_TEST_GGUF for another GGUF.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pull() -> Path:
    out = subprocess.run(
        [sys.executable, "-m", "realm_web.cli", "pull"],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """Directory of the default model (fp32 + quantized exports, tokenizer.json, realm.json)."""
    env = os.environ.get("REALM_WEB_TEST_MODEL")
    return Path(env) if env else _pull()


@pytest.fixture(scope="session")
def default_gguf(model_dir: Path) -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF that the default model was exported from."""
    env = os.environ.get("REALM_WEB_TEST_GGUF")
    if env:
        return Path(env)
    from realm_web.export.pull import default_gguf_path
    return default_gguf_path()


@pytest.fixture(scope="session")
def hf_reference(model_dir: Path, default_gguf: Path):  # type: ignore[no-untyped-def]
    """transformers (torch, fp32) on the same GGUF weights: (model, tokenizer)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        default_gguf.parent, gguf_file=default_gguf.name, dtype=torch.float32)
    model.eval()
    return model, tok


def make_tiny_hf_model(out: Path, tokenizer_dir: Path, *, arch: str = "llama", seed: int = 0) -> Path:
    """A random-weight Llama (or Qwen2: q/k/v bias) saved as a Hugging Face directory."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(seed)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=49152, max_position_embeddings=256, rms_norm_eps=1e-5,
                  tie_word_embeddings=arch == "llama", bos_token_id=1, eos_token_id=2)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e5})
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # non-trivial norms and biases so that mistakes show
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / f).exists():
            shutil.copy(tokenizer_dir / f, out / f)
    return out


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny-llama"), model_dir)
