"""The Starlette app: a thin shell over the Hub (OpenAI-compatible HTTP with SSE, /ws, health,
metrics). `create_app(load)` takes a function that builds the model (a ModelService, such as an
LLM); it runs in a thread at startup, so /health answers 503 until the model is ready.

Handlers find the hub and the config on `request.app.state`; requests are parsed and answers
shaped in protocol.py, admitted and run by the hub."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from ..lora import AdapterError, AdapterInUse, AdapterNotFound
from ..service import ModelService
from . import protocol as P
from .auth import api_key, authenticate
from .body import read_json
from .config import ServerConfig
from .errors import ApiError
from .hub import Hub, Job
from .metrics import Metrics
from .web import CrossOriginIsolation, web_routes
from .tokenize import detokenize, tokenize, tokenizer_info
from .ws import websocket_endpoint

log = logging.getLogger("realm_web.server")


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


# -- handlers ------------------------------------------------------------------------------------
async def health(request: Request) -> Response:
    h = _hub(request).health()
    return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)


async def metrics_endpoint(request: Request) -> Response:
    config: ServerConfig = request.app.state.config
    if config.metrics_api_key is not None and api_key(request.headers) != config.metrics_api_key:
        raise ApiError(401, "this endpoint needs the metrics API key", code="invalid_api_key")
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _model_card(hub: Hub, adapter: str | None = None) -> dict[str, Any]:
    """The base model's card, or an adapter's (vLLM's shape: `parent` is the base)."""
    info = hub.model.info
    card = {"id": adapter or info.id, "object": "model", "created": info.created, "owned_by": "realm-web",
            "max_model_len": info.max_length, "root": info.id, "parent": info.id if adapter else None}
    if adapter is not None:  # realm-web: where a browser tab downloads it to run it there too
        card["files"] = [f"/adapters/{adapter}/{f}" for f in sorted(hub.model.adapter_files(adapter))]
    return card


async def adapter_file(request: Request) -> Response:
    """GET /adapters/{name}/{file}: a loaded adapter's file for a browser tab (the page's
    loadAdapter), to tenants that may use the adapter (others get 404, as in /v1/models)."""
    hub = _hub(request)
    tenant = authenticate(request.app.state.config, api_key(request.headers, request.query_params))
    service = hub.model
    name, file = request.path_params["name"], request.path_params["file"]
    if name == hub.model_id:
        raise ApiError(404, f"no adapter {name!r}", code="model_not_found", param="model")
    hub.check_model(tenant, name)
    path = service.adapter_files(name).get(file)
    if path is None or not Path(path).is_file():
        raise ApiError(404, f"adapter {name!r} has no file {file!r}", code="not_found")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


async def list_models(request: Request) -> Response:
    hub = _hub(request)
    tenant = authenticate(request.app.state.config, api_key(request.headers))
    hub.model  # noqa: B018 - 503 while not ready
    return JSONResponse({"object": "list", "data": [_model_card(hub, a) for a in hub.models_for(tenant)]})


async def get_model(request: Request) -> Response:
    hub = _hub(request)
    tenant = authenticate(request.app.state.config, api_key(request.headers))
    hub.model  # noqa: B018 - 503 while not ready
    adapter = hub.check_model(tenant, request.path_params["model"])
    return JSONResponse(_model_card(hub, adapter))


async def load_lora_adapter(request: Request) -> Response:
    """POST /v1/load_lora_adapter {"lora_name", "lora_path"}: admin tenants only, the path under
    the server's lora_root; loading over a name in use is a 409."""
    hub, config = _hub(request), request.app.state.config
    tenant = authenticate(config, api_key(request.headers))
    body = await read_json(request, config)
    name, path = _lora_fields(body, ("lora_name", "lora_path"))
    _admin(tenant, config)
    service = hub.model
    root = Path(config.lora_root).resolve()
    target = (root / path).resolve()
    if not (target == root or root in target.parents):
        raise ApiError(403, "'lora_path' must lie under the server's lora root", code="forbidden", param="lora_path")
    try:
        service.load_adapter(name, str(target))
    except AdapterError as e:
        raise _adapter_error(e, "lora_path") from None
    log.info("adapter loaded", extra={"fields": {"adapter": name, "tenant": tenant.name}})
    return JSONResponse({"object": "lora_adapter", "id": name, "parent": hub.model_id, "status": "loaded"})


async def unload_lora_adapter(request: Request) -> Response:
    hub, config = _hub(request), request.app.state.config
    tenant = authenticate(config, api_key(request.headers))
    body = await read_json(request, config)
    (name,) = _lora_fields(body, ("lora_name",))
    _admin(tenant, config, need_root=False)
    try:
        hub.model.unload_adapter(name)
    except AdapterError as e:
        raise _adapter_error(e, "lora_name") from None
    log.info("adapter unloaded", extra={"fields": {"adapter": name, "tenant": tenant.name}})
    return JSONResponse({"object": "lora_adapter", "id": name, "status": "unloaded"})


def _lora_fields(body: Any, names: tuple[str, ...]) -> list[str]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    unknown = set(body) - set(names)
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {sorted(unknown)[0]}", code="unknown_parameter",
                       param=sorted(unknown)[0])
    out = []
    for n in names:
        v = body.get(n)
        if not isinstance(v, str) or not v:
            raise ApiError(400, f"'{n}' is required (a non-empty string)", code="missing_required_parameter", param=n)
        out.append(P.check_name(v, n) if n == "lora_name" else P.check_text(v, n))
    return out


def _admin(tenant: Any, config: ServerConfig, need_root: bool = True) -> None:
    if not tenant.admin:
        raise ApiError(403, "loading and unloading adapters needs an admin tenant", code="forbidden")
    if need_root and config.lora_root is None:
        raise ApiError(403, "this server loads no adapters at run time (start it with --lora-root)", code="forbidden")


def _adapter_error(e: AdapterError, param: str) -> ApiError:
    if isinstance(e, AdapterInUse):
        return ApiError(409, str(e), code="adapter_in_use", param="lora_name")
    if isinstance(e, AdapterNotFound):
        return ApiError(404, str(e), code="adapter_not_found", param="lora_name")
    return ApiError(400, str(e), code="invalid_adapter", param="lora_name" if e.field == "name" else e.field or param)


async def chat(request: Request) -> Response:
    return await _generate(request, "chat")


async def completions(request: Request) -> Response:
    return await _generate(request, "completion")


async def _generate(request: Request, kind: str) -> Response:
    hub, config = _hub(request), request.app.state.config
    endpoint = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    tenant = authenticate(config, api_key(request.headers))
    body = await read_json(request, config)
    model = hub.model
    req = P.parse_chat(body, model) if kind == "chat" else P.parse_completion(body, model, model.info.vocab_size)
    job = hub.submit(tenant, req, endpoint)
    if req.stream:
        return StreamingResponse(_stream_body(job, model), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _complete_body(job, model, request)


async def _complete_body(job: Job, model: ModelService, request: Request) -> Response:
    gathered = P.ChoiceText(job.req)

    async def watch_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()

    watcher = asyncio.get_running_loop().create_task(watch_disconnect())
    try:
        async for i, d in job.events():
            gathered.add(i, d, model.token_bytes)
    finally:
        watcher.cancel()
    if "error" in job.finish.values():
        raise ApiError(500, P.ENGINE_FAILED + "; other requests are unaffected", code="engine_error")
    if job.timed_out:
        raise P.timeout_error(job.hub.config.request_timeout_s)
    return JSONResponse(gathered.body(job.finish, job.completion_tokens))


async def _stream_body(job: Job, model: ModelService) -> AsyncIterator[bytes]:
    writer = P.ChunkWriter(job.req, model.token_bytes)
    try:
        async for i, d in job.events(coalesce=True):
            for chunk in writer.chunks(i, d):
                yield chunk
        if job.timed_out:
            yield P.sse(P.timeout_error(job.hub.config.request_timeout_s).body())
        if job.req.include_usage:
            yield writer.usage(job.completion_tokens)
    except ApiError as e:
        yield P.sse(e.body())
    yield P.SSE_DONE


async def no_route(request: Request) -> Response:
    path = request.url.path
    if path in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
        raise ApiError(405, f"{request.method} is not allowed on {path}", code="method_not_allowed")
    raise ApiError(404, f"no route {request.method} {path}", code="not_found")


# -- errors --------------------------------------------------------------------------------------
async def api_error(request: Any, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    request.app.state.metrics.refused(request.url.path, exc.status, exc.code)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def http_error(request: Any, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    e = ApiError(exc.status_code, exc.detail if exc.status_code != 404 else f"no route {request.url.path}",
                 code="not_found" if exc.status_code == 404 else "method_not_allowed")
    return JSONResponse(e.body(), status_code=e.status, headers=dict(exc.headers or {}))


async def server_error(request: Any, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"fields": {"path": request.url.path}})
    request.app.state.metrics.refused(request.url.path, 500, "internal_error")
    body = {"error": {"message": f"internal error: {type(exc).__name__}", "type": "server_error",
                      "param": None, "code": "internal_error"}}
    return JSONResponse(body, status_code=500)


# -- the app -------------------------------------------------------------------------------------
def create_app(load: Callable[[], ModelService], config: ServerConfig | None = None, *, web_dir: Path | None = None,
               model_dir: Path | None = None) -> Starlette:
    """The app. `load` builds the model (in a thread, at startup). With `web_dir` (the page, see
    `make web`) and `model_dir`, it also serves the page at / and the model files it downloads
    at /models/default/, so the chat can run in the tab or on this server."""
    config = config or ServerConfig()
    metrics = Metrics()
    hub = Hub(config, metrics)

    async def load_model() -> None:
        try:
            service = await asyncio.to_thread(load)
        except Exception as e:  # noqa: BLE001 - reported by /health and every request
            hub.load_error = f"{type(e).__name__}: {e}"
            log.error("model load failed", extra={"fields": {"error": hub.load_error}})
            return
        hub.attach(service)
        log.info("model ready", extra={"fields": {"model": hub.model_id}})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(load_model())
        yield
        await hub.drain(0.0 if hub.draining else config.shutdown_grace_s)
        task.cancel()
        if hub.service is not None:
            hub.service.close()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/tokenizer_info", tokenizer_info, methods=["GET"]),
        Route("/v1/unload_lora_adapter", unload_lora_adapter, methods=["POST"]),
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/adapters/{name}/{file}", adapter_file, methods=["GET", "HEAD"]),
        Route("/v1/{rest:path}", no_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        *web_routes(web_dir, model_dir),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(CrossOriginIsolation)],
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.hub = hub
    app.state.config = config
    app.state.metrics = metrics
    return app
