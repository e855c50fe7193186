"""Assemble the web page's bundle in build/web from local packages only:

    build/web/            the page (static/*)
    build/web/pyodide/    Pyodide core (npm `pyodide`)
    build/web/ort/        onnxruntime-web's dist/ (npm)
    build/web/realm/      the JS bridge and the core's pure-Python wheel (+ wheel.txt naming it)

Large directories are symlinked, not copied. The model is not part of the bundle: the server
maps /models/default/ to the model directory (`realm-web pull`).

    python tools/build_web.py                 # after `npm ci` in wasm/ (make web does both)
    python tools/build_web.py --copy DIR      # the page as real files, only what it loads (PAGE_FILES):
                                              # what the wheel carries (tools/build_wheel.py)
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from build_core_wheel import build  # noqa: E402


def link(src: Path, dst: Path) -> None:
    if not src.exists():
        raise SystemExit(f"build_web: {src} is missing: run `cd wasm && npm ci` (or `make web`)")
    if dst.is_symlink() or dst.exists():
        dst.unlink() if dst.is_symlink() or dst.is_file() else shutil.rmtree(dst)
    dst.symlink_to(src.resolve())


# What the page loads at run time, beyond static/ and realm/ (the rest of the npm packages is not
# shipped in the wheel): onnxruntime-web's WASM and WebGPU builds, and Pyodide's core.
PAGE_FILES = {
    "ort": ["ort.wasm.min.mjs", "ort.webgpu.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
            "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"],
    "pyodide": ["pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json",
                "package.json"],
}


def copy_page(out: Path) -> Path:
    """build/web's page as plain files under `out` (replaced), only what the page loads."""
    web = ROOT / "build" / "web"
    if not (web / "index.html").exists():
        raise SystemExit("build_web --copy: build/web is not built: run `make web` first")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in web.iterdir():
        if f.name in PAGE_FILES:
            (out / f.name).mkdir()
            for name in PAGE_FILES[f.name]:
                shutil.copyfile(f / name, out / f.name / name)
        elif f.is_dir():
            shutil.copytree(f, out / f.name, symlinks=False)
        else:
            shutil.copyfile(f, out / f.name)
    return out


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--copy":
        print(copy_page(Path(sys.argv[2])))
        return 0
    out = ROOT / "build" / "web"
    (out / "realm").mkdir(parents=True, exist_ok=True)
    for f in (ROOT / "static").iterdir():
        link(f, out / f.name)
    nm = ROOT / "wasm" / "node_modules"
    link(nm / "pyodide", out / "pyodide")
    link(nm / "onnxruntime-web" / "dist", out / "ort")
    for f in ("bridge.mjs", "gpu_bridge.mjs", "kernels.mjs", "adapters.mjs", "packed.mjs", "download.mjs"):
        link(ROOT / "wasm" / "src" / f, out / "realm" / f)
    for old in (out / "realm").glob("*.whl"):
        old.unlink()
    wheel = build(out / "realm")
    (out / "realm" / "wheel.txt").write_text(wheel.name)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
