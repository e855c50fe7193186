"""The same core in two interpreters: the scheduler's unit tests run under pytest inside Pyodide
(in Node), and the tokenizer and chat template give Pyodide the same results as CPython."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from realm_web import load_chat_template, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
PYWHEELS = ROOT / "wasm" / "dist" / "pywheels"


def corpus(seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    fixed = ["What is the capital of France?", "  leading spaces\tand\ttabs\n\nnew lines", "naïve café déjà vu",
             "数学は楽しい。🙂👍🏽", "x = [i**2 for i in range(10)]  # squares", "12345 67.89 1,000,000",
             "Ünïcödé and ZWJ: 👨‍👩‍👧 and RTL: שלום עולם", "<|im_start|>user\nhi<|im_end|>", "I'm won't they'll", ""]
    pools = [range(0x20, 0x7F), range(0xA0, 0x250), range(0x3040, 0x30FF), range(0x4E00, 0x4F00),
             range(0x1F300, 0x1F64F), range(0x0400, 0x04FF)]
    rand = ["".join(chr(rng.choice(rng.choice(pools))) if rng.random() > 0.15 else rng.choice(" \n\t'")
                    for _ in range(rng.randrange(1, 80))) for _ in range(300)]
    return fixed + rand


def test_core_in_pyodide_matches_cpython(model_dir: Path, tmp_path: Path) -> None:
    if shutil.which("node") is None or not PYWHEELS.exists():
        pytest.fail("node and wasm/dist/pywheels are needed: `make web` installs them")
    wheel = subprocess.run([sys.executable, str(ROOT / "tools" / "build_core_wheel.py"), "--out", str(tmp_path)],
                           check=True, capture_output=True, text=True).stdout.strip()
    tok = load_tokenizer(model_dir)
    texts = corpus()
    rng = random.Random(5)
    ids = [[rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 30))] for _ in range(100)]
    chats = [[{"role": "user", "content": t}] for t in texts[:20]] + \
            [[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": texts[3]}]]
    work = tmp_path / "work"
    work.mkdir()
    (work / "inputs.json").write_text(json.dumps({"texts": texts, "ids": ids, "chats": chats}))
    model = tmp_path / "model"  # tokenizer, template, manifest: no weights
    model.mkdir()
    for f in ("realm.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (model_dir / f).exists():
            shutil.copy(model_dir / f, model / f)
    cmd = ["node", str(ROOT / "wasm" / "src" / "pyrun.mjs"), "--wheel", wheel]
    for w in sorted(PYWHEELS.glob("*.whl")):
        cmd += ["--wheel", str(w)]
    cmd += ["--copy", f"{ROOT / 'tests'}:/tests", "--copy", f"{model}:/model", "--copy", f"{work}:/work",
            "--fetch", f"/work/out.json:{work / 'out.json'}", str(ROOT / "tests" / "pyodide_checks.py")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
    got = json.loads((work / "out.json").read_text())
    tpl = load_chat_template(model_dir)
    assert got["encode"] == [tok.encode(t) for t in texts]
    assert got["decode"] == [tok.decode(x) for x in ids]
    assert got["chat"] == [tpl.render(m, add_generation_prompt=True) for m in chats]
