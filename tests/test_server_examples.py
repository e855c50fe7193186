"""examples/paris/server, python-sdk and native: they print Paris (a real server, or in-process)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server_proc import ROOT, ServerProcess

pytestmark = pytest.mark.model


def test_server_examples_answer_paris(model_dir: Path, tmp_path: Path) -> None:
    s = ServerProcess(model_dir, tmp_path, config=None, extra=["--dtype", "int4"])
    try:
        out = subprocess.run(["sh", str(ROOT / "examples/paris/server/paris.sh"), s.url], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and "Paris" in out.stdout, out.stderr
        out = subprocess.run([sys.executable, str(ROOT / "examples/paris/python-sdk/paris.py"), s.url],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert len(lines) == 2 and all("Paris" in x for x in lines), out.stdout
    finally:
        s.stop()


def test_native_example_answers_paris(model_dir: Path) -> None:
    """examples/paris/native: the Python API in-process, whole answer and streamed."""
    for extra in ([], ["--stream"]):
        out = subprocess.run([sys.executable, str(ROOT / "examples/paris/native/paris.py"), "--model", str(model_dir),
                              *extra], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "Paris" in out.stdout, (extra, out.stdout, out.stderr[-2000:])
