"""Build the pure-Python wheel of realm-web's core for Pyodide: the package's top level plus the
web engine (no exporter, no native engine), standard library only.

    python tools/build_core_wheel.py [--out DIR]     # prints the wheel's path
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ["realm_web/*.py", "realm_web/structured/*.py", "realm_web/engines/__init__.py", "realm_web/engines/ort_web.py"]


def version() -> str:
    m = re.search(r'__version__ = "([^"]+)"', (ROOT / "realm_web/__init__.py").read_text())
    assert m
    return m.group(1)


def build(out: Path) -> Path:
    ver = version()
    dist = f"realm_web-{ver}.dist-info"
    files: dict[str, bytes] = {}
    for pattern in CORE:
        for f in sorted(ROOT.glob(pattern)):
            files[f.relative_to(ROOT).as_posix()] = f.read_bytes()
    files[f"{dist}/METADATA"] = (f"Metadata-Version: 2.1\nName: realm-web\nVersion: {ver}\n"
                                 "Summary: realm-web core (Pyodide build: no exporter, no native engine)\n").encode()
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: realm-web build_core_wheel\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist}/top_level.txt"] = b"realm_web\n"
    record = io.StringIO()
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write(f"{name},sha256={digest},{len(data)}\n")
    record.write(f"{dist}/RECORD,,\n")
    files[f"{dist}/RECORD"] = record.getvalue().encode()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"realm_web-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # reproducible
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "wasm" / "dist"))
    print(build(Path(ap.parse_args().out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
