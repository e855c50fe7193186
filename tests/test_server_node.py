"""Node.js clients against a real server process: the official `openai` npm package and
realm-web's RealmClient (tests/node/server_clients.test.mjs), and examples/paris/nodejs-sdk."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from server_proc import ROOT, ServerProcess

pytestmark = pytest.mark.model


def test_node_clients(model_dir: Path, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is needed: .ci/run installs it"
    if not (ROOT / "tests/node/node_modules/openai").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT / "tests/node", check=True)
    config = '[[tenants]]\nname = "node"\napi_keys = ["sk-node-0000001"]\n'
    s = ServerProcess(model_dir, tmp_path, config=config, extra=["--dtype", "int4"])
    try:
        env = {**os.environ, "REALM_SERVER_URL": s.url, "REALM_API_KEY": "sk-node-0000001"}
        r = subprocess.run([node, "--test", "tests/node/server_clients.test.mjs"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        r = subprocess.run([node, "examples/paris/nodejs-sdk/paris.mjs", s.url, "sk-node-0000001"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        assert len(lines) == 2 and all("Paris" in x for x in lines), r.stdout
    finally:
        s.stop()
