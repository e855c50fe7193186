"""The web page and the model files it downloads, served by the server itself, cross-origin
isolated (COOP/COEP: onnxruntime-web needs it for WASM threads) with the right MIME types."""
from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("application/wasm", ".wasm")

ISOLATION = [(b"cross-origin-opener-policy", b"same-origin"), (b"cross-origin-embedder-policy", b"require-corp"),
             (b"cross-origin-resource-policy", b"same-origin")]


def default_web_dir() -> Path | None:
    """The chat page: the one the installed package carries (realm_web/_page, put in the wheel by
    tools/build_wheel.py), else build/web of a source checkout (made by `make web`), if any."""
    for d in (Path(__file__).resolve().parents[1] / "_page", Path(__file__).resolve().parents[2] / "build" / "web"):
        if (d / "index.html").exists():
            return d
    return None


class CrossOriginIsolation:
    """Adds COOP/COEP/CORP to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + ISOLATION
            await send(message)

        await self.app(scope, receive, send_with)


def web_routes(web_dir: Path | None, model_dir: Path | None) -> list[Any]:
    routes: list[Any] = []
    if model_dir is not None:
        model = model_dir.resolve()

        async def model_file(request: Request) -> Response:
            name = request.path_params["name"]
            path = (model / name).resolve()
            if "/" in name or name.startswith(".") or path.parent != model or not path.is_file():
                raise HTTPException(404)
            return FileResponse(path, headers={"Cache-Control": "no-cache"})

        routes.append(Route("/models/default/{name}", model_file, methods=["GET", "HEAD"]))
    if web_dir is not None:
        routes.append(Mount("/", StaticFiles(directory=web_dir, html=True, follow_symlink=True), name="web"))
    return routes
