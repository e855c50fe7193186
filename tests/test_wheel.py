"""The package as a pip user gets it: the wheel built by tools/build_wheel.py, installed with its
`server` extra into a fresh virtualenv (no checkout on its path), runs `realm-web serve`, which
serves the chat page from the wheel's own files; the page answers in Chromium by real inference."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""


@pytest.mark.model
def test_the_wheel_serves_the_chat_page_from_a_fresh_virtualenv(tmp_path: Path, model_dir: Path) -> None:
    if not (ROOT / "build" / "web" / "index.html").exists():
        pytest.fail("build/web is needed: `make web` (the test command runs it)")
    wheel = Path(subprocess.run([sys.executable, str(ROOT / "tools" / "build_wheel.py"), "--out", str(tmp_path / "dist")],
                                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    names = zipfile.ZipFile(wheel).namelist()
    assert "realm_web/_page/index.html" in names and "realm_web/_page/ort/ort-wasm-simd-threaded.wasm" in names
    assert not (ROOT / "realm_web" / "_page").exists()  # the checkout is left as it was
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"{wheel}[server]"],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    srv = subprocess.Popen([str(venv / "bin" / "realm-web"), "serve", "--model", str(model_dir), "--port", str(port)],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    site = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if srv.poll() is not None:
                pytest.fail(f"realm-web serve exited: {srv.stdout.read()[-3000:] if srv.stdout else ''}")
            try:
                if get(f"{site}/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        where = subprocess.run([str(venv / "bin" / "python"), "-c", "import realm_web, sys; print(realm_web.__file__)"],
                               capture_output=True, text=True, cwd=tmp_path, env=env).stdout
        assert str(venv) in where  # the installed package, not the checkout
        status, body, _ = get(f"{site}/")
        assert status == 200 and b"realm" in body.lower()
        for path, kind in (("/worker.mjs", "javascript"), ("/ort/ort.wasm.min.mjs", "javascript"),
                           ("/ort/ort-wasm-simd-threaded.wasm", "application/wasm"), ("/pyodide/pyodide.mjs", "javascript")):
            status, _, ctype = get(site + path)
            assert status == 200 and kind in ctype, (path, status, ctype)
        wheel_name = get(f"{site}/realm/wheel.txt")[1].decode().strip()
        assert get(f"{site}/realm/{wheel_name}")[0] == 200
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            page = b.new_page()
            page.goto(f"{site}/?backend=wasm&threads=2")
            info = page.evaluate("() => window.realm.ready")
            r = page.evaluate("() => window.realm.generate('What is the capital of France?', {maxTokens: 16})")
            b.close()
        assert info["backend"] == "wasm" and info["packed"] is True
        assert "Paris" in r["text"], json.dumps(r)[:500]
    finally:
        srv.terminate()
        srv.wait(timeout=30)
