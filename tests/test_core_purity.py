"""The core imports only the standard library (it must run unchanged in Pyodide)."""
import subprocess
import sys

FORBIDDEN = ["numpy", "onnxruntime", "torch", "js", "pyodide", "onnx", "gguf", "jinja2", "tokenizers", "transformers"]


def test_core_import_pulls_no_runtime() -> None:
    code = (
        "import sys\nbefore = set(sys.modules)\nimport realm_web, realm_web.scheduler, realm_web.sampling, realm_web.stream, realm_web.engine,"
        " realm_web.tokenizer, realm_web.chat, realm_web.manifest, realm_web.step, realm_web.web, realm_web.engines.ort_web, realm_web.lora, realm_web.service,"
        " realm_web.structured, realm_web.structured.tools\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "std = set(sys.stdlib_module_names)\n"
        "other = sorted({n.split('.')[0] for n in set(sys.modules) - before} - std - {'realm_web'})\n"
        "print(bad, other)\n"
        "assert not bad and not other, (bad, other)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
