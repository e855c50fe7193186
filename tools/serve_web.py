"""Serve the web bundle (build/web) and a model directory, cross-origin isolated (COOP/COEP, so
onnxruntime-web can use WASM threads), with the right MIME types. A development server until
`realm-web serve` serves the page itself.

    python tools/serve_web.py [--port 8765] [--model DIR]     # then open http://127.0.0.1:8765/
"""
from __future__ import annotations

import argparse
import functools
import http.server
import mimetypes
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("application/wasm", ".wasm")


class Handler(http.server.SimpleHTTPRequestHandler):
    model_dir: Path = Path()

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def translate_path(self, path: str) -> str:
        p = path.split("?", 1)[0].split("#", 1)[0]
        if p.startswith("/models/default/"):
            name = p[len("/models/default/"):]
            if "/" in name or name.startswith("."):
                return str(self.model_dir / "__missing__")
            return str(self.model_dir / name)
        return super().translate_path(path)

    def log_message(self, format: str, *args: object) -> None:  # quiet by default
        pass


def make_server(port: int, model_dir: Path, web_dir: Path | None = None) -> http.server.ThreadingHTTPServer:
    Handler.model_dir = model_dir
    handler = functools.partial(Handler, directory=str(web_dir or ROOT / "build" / "web"))
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--model", default=None, help="model directory (default: the pulled default model)")
    a = ap.parse_args()
    if a.model:
        model = Path(a.model)
    else:
        sys.path.insert(0, str(ROOT))
        from realm_web.paths import default_model_dir

        model = default_model_dir()
    srv = make_server(a.port, model)
    print(f"realm-web page: http://127.0.0.1:{a.port}/  (model {model})")
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
