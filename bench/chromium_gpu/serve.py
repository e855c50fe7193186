"""The page of bench/chromium_gpu/index.html and what it needs, for Chromium on the lent GPU:
the repository root (the page, wasm/src), /model/* from MODEL_DIR, /cfg.json (the bridge config),
and POST /result, written to OUT_JSON, after which the server exits.
    python3 bench/chromium_gpu/serve.py MODEL_DIR CFG_JSON OUT_JSON [PORT]"""
from __future__ import annotations

import functools
import http.server
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript"}

    def log_message(self, *a: object) -> None:
        pass

    def translate_path(self, path: str) -> str:
        p = path.split("?")[0]
        if p.startswith("/model/"):
            return str(Path(sys.argv[1]) / p[len("/model/"):])
        if p == "/cfg.json":
            return sys.argv[2]
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Path(sys.argv[3]).write_bytes(body)
        self.send_response(204)
        self.end_headers()
        threading.Thread(target=self.server.shutdown, daemon=True).start()


def main() -> None:
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 8977
    handler = functools.partial(Handler, directory=str(ROOT))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as srv:
        srv.serve_forever()


if __name__ == "__main__":
    main()
