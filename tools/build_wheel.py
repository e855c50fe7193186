"""Build realm-web's wheel with the chat page inside it (realm_web/_page: the page, Pyodide's core,
onnxruntime-web's WASM and WebGPU builds, the core's Pyodide wheel), so `realm-web serve` from a
plain `pip install realm-web[server]` serves the page as a checkout does. Needs `make web` first.

    python tools/build_wheel.py [--out dist]      # prints the wheel's path
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from build_web import copy_page  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "dist"))
    a = ap.parse_args()
    page = ROOT / "realm_web" / "_page"
    copy_page(page)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for old in out.glob("realm_web-*.whl"):
            old.unlink()
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                        str(ROOT)], check=True)
    finally:
        shutil.rmtree(page, ignore_errors=True)
        shutil.rmtree(ROOT / "build" / "lib", ignore_errors=True)  # setuptools' staging copy
        shutil.rmtree(ROOT / "build" / "bdist.linux-x86_64", ignore_errors=True)
    wheel = next(out.glob("realm_web-*.whl"))
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
