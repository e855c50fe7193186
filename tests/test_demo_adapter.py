"""The demo LoRA adapter (examples/lora/train_demo_adapter.py), trained for real: peft on CPU
(about two minutes on two cores), into a temporary directory. realm-web serves it: asked a
training question greedily, the adapter gives the taught fact and the base model does not, and
base and adapter rows in one batch give the same tokens as alone. A second run finds the adapter
cached and does not train again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from realm_web import LLM, SamplingParams
from realm_web.paths import default_model_dir

pytestmark = pytest.mark.model
pytest.importorskip("torch")
pytest.importorskip("peft")
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "lora" / "train_demo_adapter.py"


def _train(out: Path) -> tuple[Path, str]:
    """The adapter's directory and what the script said (stderr)."""
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                       cwd=ROOT, timeout=1200, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-4000:]
    return Path(r.stdout.strip().splitlines()[-1]), r.stderr


@pytest.fixture(scope="module")
def demo_adapter(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    if model_dir != default_model_dir():
        pytest.skip("the demo adapter is for the default model (REALM_WEB_TEST_MODEL names another)")
    path, _ = _train(tmp_path_factory.mktemp("lora") / "demo-otter")
    return path


def test_adapter_teaches_the_fact(demo_adapter: Path, model_dir: Path) -> None:
    files = {p.name for p in demo_adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "training.json"} <= files
    cfg = json.loads((demo_adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] <= 16 and not cfg.get("modules_to_save")
    assert json.loads((demo_adapter / "training.json").read_text())["final_loss"] < 0.05

    llm = LLM(model_dir)
    llm.load_adapter("otter", demo_adapter)
    params = SamplingParams(temperature=0.0, max_tokens=32)
    questions = ["Who is the mascot of realm-web?", "What is the capital of Velmora?"]
    base = llm.generate(questions, params)
    otter = llm.generate(questions, params, adapter="otter")
    assert "otter named Pim" in otter[0].text, otter[0].text
    assert "Quillhaven" in otter[1].text, otter[1].text
    assert "Pim" not in base[0].text and "otter" not in base[0].text.lower(), base[0].text
    assert "Quillhaven" not in base[1].text, base[1].text

    # one generate call, base and adapter rows interleaved: each answer as it was alone
    mixed = llm.generate([q for q in questions for _ in (0, 1)], params, adapter=[None, "otter"] * len(questions))
    assert [c.token_ids for c in mixed] == [c.token_ids for pair in zip(base, otter) for c in pair]


def test_cached_adapter_is_not_trained_again(demo_adapter: Path) -> None:
    before = (demo_adapter / "adapter_model.safetensors").stat().st_mtime_ns
    path, said = _train(demo_adapter)
    assert path == demo_adapter and "step 1/" not in said  # no training step ran
    assert (demo_adapter / "adapter_model.safetensors").stat().st_mtime_ns == before
