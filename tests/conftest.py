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
