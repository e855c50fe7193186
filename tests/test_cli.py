"""The command line as a user runs it: real processes, the default model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, model: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if model is not None:
        args = (*args, "--model", str(model))
    return subprocess.run([sys.executable, "-m", "realm_web.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def test_generate_answers_paris(model_dir: Path) -> None:
    r = cli("generate", "What is the capital of France?", model=model_dir)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_generate_json_fields(model_dir: Path) -> None:
    r = cli("generate", "What is the capital of France?", "--json", "--dtype", "fp32", "--max-tokens", "24", model=model_dir)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "Paris" in out["text"]
    assert out["finish_reason"] == "stop"
    assert out["usage"]["prompt_tokens"] == len(out["prompt_token_ids"]) == 37
    assert out["usage"]["completion_tokens"] == len(out["token_ids"])
    assert out["timings"]["ttft_s"] > 0


def test_stream_and_sampling_options(model_dir: Path) -> None:
    r = cli("generate", "Name a color.", "--stream", "--temperature", "0.7", "--top-k", "40", "--top-p", "0.9",
            "--seed", "3", "--max-tokens", "12", "--system", "Answer in one word.", model=model_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    r2 = cli("generate", "Name a color.", "--stream", "--temperature", "0.7", "--top-k", "40", "--top-p", "0.9",
             "--seed", "3", "--max-tokens", "12", "--system", "Answer in one word.", model=model_dir)
    assert r2.stdout == r.stdout  # same seed, same text


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_speculative_generate_is_plain_generate(model_dir: Path, method: str) -> None:
    args = ("generate", "Repeat exactly: the quick brown fox jumps over the lazy dog.", "--json", "--dtype", "fp32",
            "--max-tokens", "24")
    plain = json.loads(cli(*args, model=model_dir).stdout)
    r = cli(*args, "--speculative", method, "--num-speculative-tokens", "3", model=model_dir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["token_ids"] == plain["token_ids"]


def test_raw_prompt_and_max_tokens(model_dir: Path) -> None:
    r = cli("generate", "1, 2, 3, 4,", "--raw", "--max-tokens", "6", "--json", model=model_dir)
    out = json.loads(r.stdout)
    assert out["prompt_token_ids"][0] != 1  # no chat template: no <|im_start|>
    assert len(out["token_ids"]) == 6 and out["finish_reason"] == "length"


@pytest.mark.parametrize("args,msg", [
    (["generate", "", "--model", "{model}"], "prompt is empty"),
    (["generate", "hi", "--max-tokens", "-3", "--model", "{model}"], "max-tokens"),
    (["generate", "hi", "--temperature", "-1", "--model", "{model}"], "temperature"),
    (["generate", "hi", "--model", "/nonexistent/model"], "no such model directory"),
    (["generate", "hi", "--model", "{file}"], "not a directory"),
    (["generate", "hi", "--model", "{tmp}"], "not a realm-web model directory"),
    (["generate", "hi", "--speculative", "draft", "--dtype", "int4", "--model", "{model}"], "no export smaller"),
    (["generate", "hi", "--speculative", "draft", "--dtype", "int8", "--draft-dtype", "int8", "--model", "{model}"],
     "the target itself"),
    (["generate", "hi", "--draft-dtype", "int4", "--model", "{model}"], "need --speculative"),
    (["generate", "hi", "--speculative", "ngram", "--num-speculative-tokens", "0", "--model", "{model}"],
     "num_speculative_tokens"),
    (["export", "/nonexistent.gguf", "-o", "{tmp}/x"], "no such file"),
    (["export", "{file}", "-o", "{tmp}/x"], "not a GGUF file"),
])
def test_bad_input_is_one_line_and_nonzero(model_dir: Path, tmp_path: Path, args: list[str], msg: str) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("not a model")
    r = cli(*[a.format(model=model_dir, file=f, tmp=tmp_path) for a in args])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("realm-web: error:") and msg in lines[0], r.stderr
    assert "Traceback" not in r.stderr
