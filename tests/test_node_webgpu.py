"""Node's Realm on engine "webgpu" (the realm kernels, LoRA adapters in their own tables) on
dawn.node, the npm `webgpu` package, with Vulkan pointed at the SwiftShader that Debian's Chromium
ships (libvulkan and the ICD under /usr/lib/chromium): the base model and two adapters in one batch
give the native fp32 engine's greedy ids, and an adapter row's logprobs (logits read back) match it;
the GPU object handed to Realm.load survives a garbage collection (Realm keeps it)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adapters import write_random_adapter
from realm_web import LLM, load_manifest
from server_proc import ROOT

pytestmark = pytest.mark.model
CHROMIUM_LIB = Path("/usr/lib/chromium")
JOBS = [["What is the capital of France?", None], ["What is the capital of France?", "a1"],
        ["Name three colors.", "a2"], ["Name three colors.", None]]


def test_node_engine_webgpu_with_adapters(model_dir: Path, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is needed: .ci/run installs it"
    assert (CHROMIUM_LIB / "vk_swiftshader_icd.json").exists(), "Debian's chromium is needed (make sysdeps-test)"
    if not (ROOT / "tests/node/node_modules/webgpu").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT / "tests/node", check=True)
    arch = load_manifest(model_dir).architecture
    adapters = {"a1": write_random_adapter(tmp_path / "a1", arch, r=16, alpha=32, seed=21, b_scale=0.12),
                "a2": write_random_adapter(tmp_path / "a2", arch, r=8, alpha=16, seed=22, b_scale=0.15,
                                           targets=("q_proj", "v_proj"))}
    wheel = subprocess.run([sys.executable, str(ROOT / "tools" / "build_core_wheel.py"), "--out", str(tmp_path)],
                           check=True, capture_output=True, text=True).stdout.strip()
    n = 5
    job = {"model": str(model_dir), "wheel": wheel, "adapters": {k: str(v) for k, v in adapters.items()},
           "jobs": JOBS, "maxTokens": n, "alone": JOBS[2]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "VK_ICD_FILENAMES": str(CHROMIUM_LIB / "vk_swiftshader_icd.json"),
           "LD_LIBRARY_PATH": f"{CHROMIUM_LIB}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":")}
    r = subprocess.run([node, "--expose-gc", "tests/node/webgpu_engine.mjs", str(tmp_path / "job.json")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])

    llm = LLM(model_dir, dtype="fp32", max_slots=1, max_length=512)
    for name, path in adapters.items():
        llm.load_adapter(name, path)
    want = [llm.generate(p, max_tokens=n, adapter=a)[0].token_ids for p, a in JOBS]
    p, a = JOBS[2]
    alone = llm.generate(p, max_tokens=3, adapter=a, logprobs=True, temperature=0.7, seed=4)[0]
    llm.close()

    assert got["info"]["kernels"] == "realm" and got["info"]["dtype"] == "fp32" and got["info"]["adapters"] is True
    assert "swiftshader" in got["info"]["runtime"].lower(), got["info"]
    assert want[0] != want[1] and want[2] != want[3]  # the adapters change the answers
    assert got["batch"] == want
    assert got["alone"]["tokenIds"] == alone.token_ids
    assert max(abs(x - y) for x, y in zip(got["alone"]["logprobs"], alone.logprobs or [])) < 1e-3
