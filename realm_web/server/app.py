"""The Starlette app: a thin shell over the Hub (OpenAI-compatible HTTP with SSE, /ws, health,
metrics). `create_app(load)` takes a function that builds the LLM; it runs in a thread at
startup, so /health answers 503 until the model is ready."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, AsyncIterator, Callable

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from . import protocol as P
from .config import ServerConfig, Tenant
from .errors import ApiError, bad_request
from .hub import Hub, Job
from .metrics import Metrics
from .web import CrossOriginIsolation, web_routes
from .ws import websocket_endpoint

log = logging.getLogger("realm_web.server")


def api_key(headers: Any, query: Any = None) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return str(auth[7:].strip())
    key = headers.get("x-api-key") or (query.get("api_key") if query is not None else None)
    return str(key) if key else None


def authenticate(config: ServerConfig, key: str | None) -> Tenant:
    tenant = config.tenant_for_key(key)
    if tenant is None:
        raise ApiError(401, "Incorrect API key provided." if key else
                       "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    return tenant


async def read_json(request: Request, limit: int) -> Any:
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > limit):
        raise ApiError(413, f"the request body is larger than {limit} bytes", code="body_too_large")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}", None, "invalid_json") from None


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def create_app(load: Callable[[], Any], config: ServerConfig | None = None, *, web_dir: Path | None = None,
               model_dir: Path | None = None) -> Starlette:
    """The app. `load` builds the LLM (in a thread, at startup). With `web_dir` (the page, see
    `make web`) and `model_dir`, it also serves the page at / and the model files it downloads
    at /models/default/, so the chat can run in the tab or on this server."""
    config = config or ServerConfig()
    metrics = Metrics()
    hub = Hub(config, metrics)

    async def load_model() -> None:
        try:
            llm = await asyncio.to_thread(load)
        except Exception as e:  # noqa: BLE001 - reported by /health and every request
            hub.load_error = f"{type(e).__name__}: {e}"
            log.error("model load failed", extra={"fields": {"error": hub.load_error}})
            return
        hub.attach(llm)
        log.info("model ready", extra={"fields": {"model": hub.model_id}})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(load_model())
        yield
        await hub.drain(0.0 if hub.draining else config.shutdown_grace_s)
        task.cancel()
        if hub.llm is not None:
            hub.llm.close()

    async def health(request: Request) -> Response:
        if hub.llm is None or hub.draining:
            status = "draining" if hub.draining else ("error" if hub.load_error else "loading")
            return JSONResponse({"status": status, "error": hub.load_error}, status_code=503)
        s = hub.llm.scheduler
        return JSONResponse({"status": "ok", "model": hub.model_id, "running": len(s.running),
                             "waiting": len(s.waiting)})

    async def metrics_endpoint(request: Request) -> Response:
        if config.metrics_api_key is not None and api_key(request.headers) != config.metrics_api_key:
            raise ApiError(401, "this endpoint needs the metrics API key", code="invalid_api_key")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict[str, Any]:
        m = hub.llm.manifest
        return {"id": hub.model_id, "object": "model", "created": int(m.directory.stat().st_mtime),
                "owned_by": "realm-web", "max_model_len": hub.llm.engine.max_length}

    async def list_models(request: Request) -> Response:
        tenant = authenticate(config, api_key(request.headers))
        hub.check_ready()
        data = [model_card()] if tenant.allows_model(hub.model_id) else []
        return JSONResponse({"object": "list", "data": data})

    async def get_model(request: Request) -> Response:
        tenant = authenticate(config, api_key(request.headers))
        hub.check_ready()
        hub.check_model(tenant, request.path_params["model"])
        return JSONResponse(model_card())

    async def chat(request: Request) -> Response:
        return await _generate(request, "chat")

    async def completions(request: Request) -> Response:
        return await _generate(request, "completion")

    async def _generate(request: Request, kind: str) -> Response:
        endpoint = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        tenant = authenticate(config, api_key(request.headers))
        body = await read_json(request, config.max_body_bytes)
        hub.check_ready()
        req = P.parse_chat(body, hub.llm) if kind == "chat" else \
            P.parse_completion(body, hub.llm, hub.llm.manifest.vocab_size)
        job = hub.submit(tenant, req, endpoint)
        if req.stream:
            return StreamingResponse(stream_body(job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await complete_body(job, request)

    def token_strings(ids: list[int]) -> list[str]:
        tok = hub.llm.tokenizer
        return [tok.token_bytes(t).decode("utf-8", errors="replace") for t in ids]

    async def complete_body(job: Job, request: Request) -> Response:
        req = job.req
        n = len(req.choices)
        text = [""] * n
        ids: list[list[int]] = [[] for _ in range(n)]
        lps: list[list[float]] = [[] for _ in range(n)]

        async def watch_disconnect() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            job.cancel()

        watcher = asyncio.get_running_loop().create_task(watch_disconnect())
        try:
            async for i, d in job.events():
                text[i] += d.text
                ids[i] += d.token_ids
                lps[i] += d.logprobs or []
        finally:
            watcher.cancel()
        if "error" in job.finish.values():
            raise ApiError(500, "the engine failed while generating this request; other requests are unaffected",
                           code="engine_error")
        rid = P.new_id(req.kind)
        out = P.envelope(req.kind, rid, req.model)
        choices = []
        for i in range(n):
            reason = job.finish.get(i)
            if req.kind == "chat":
                c: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": text[i], "refusal": None},
                                     "logprobs": P.chat_logprobs(token_strings(ids[i]), lps[i]) if req.logprobs else None,
                                     "finish_reason": reason}
            else:
                echo = req.echo[i // req.n] if req.echo else ""
                c = {"index": i, "text": echo + text[i], "finish_reason": reason,
                     "logprobs": P.completion_logprobs(token_strings(ids[i]), lps[i]) if req.logprobs else None}
            choices.append(c)
        out["choices"] = choices
        out["usage"] = P.usage(req.prompt_tokens(), job.completion_tokens)
        return JSONResponse(out)

    async def stream_body(job: Job) -> AsyncIterator[bytes]:
        req = job.req
        rid, created = P.new_id(req.kind), int(time.time())
        base = P.envelope(req.kind, rid, req.model, created, chunk=True)
        extra = {"usage": None} if req.include_usage else {}
        started: set[int] = set()
        # the common chunk (some text, not the last, no logprobs) from a template: the hot path
        head = sse({**base, "choices": [{"index": 0}]})[: -len(b'0}]}\n\n')].decode()
        tail = ',"usage":null}' if req.include_usage else "}"
        key = '"delta":{"content":' if req.kind == "chat" else '"text":'
        close = "}" if req.kind == "chat" else ""
        try:
            async for i, d in job.events(coalesce=True):
                if d.finish_reason == "error":
                    yield sse(ApiError(500, "the engine failed while generating this request",
                                       code="engine_error").body())
                    continue
                if req.kind == "chat":
                    if i not in started:
                        started.add(i)
                        yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                         "logprobs": None, "finish_reason": None}], **extra})
                    if d.text and not d.finished and not (req.logprobs and d.logprobs):
                        yield (f'{head}{i},{key}{json.dumps(d.text, ensure_ascii=False)}{close},"logprobs":null,'
                               f'"finish_reason":null}}]{tail}\n\n').encode()
                        continue
                    delta = {"content": d.text} if d.text else {}
                    lp = P.chat_logprobs(token_strings(d.token_ids), d.logprobs) if req.logprobs and d.logprobs else None
                    if delta or d.finished or lp:
                        yield sse({**base, "choices": [{"index": i, "delta": delta, "logprobs": lp,
                                                         "finish_reason": d.finish_reason}], **extra})
                else:
                    text = d.text
                    if i not in started:
                        started.add(i)
                        text = (req.echo[i // req.n] if req.echo else "") + text
                    if text and not d.finished and not (req.logprobs and d.logprobs):
                        yield (f'{head}{i},{key}{json.dumps(text, ensure_ascii=False)}{close},"logprobs":null,'
                               f'"finish_reason":null}}]{tail}\n\n').encode()
                        continue
                    lp = P.completion_logprobs(token_strings(d.token_ids), d.logprobs) \
                        if req.logprobs and d.logprobs else None
                    if text or d.finished or lp:
                        yield sse({**base, "choices": [{"index": i, "text": text, "logprobs": lp,
                                                         "finish_reason": d.finish_reason}], **extra})
            if req.include_usage:
                yield sse({**base, "choices": [], "usage": P.usage(req.prompt_tokens(), job.completion_tokens)})
        except ApiError as e:
            yield sse(e.body())
        yield b"data: [DONE]\n\n"

    async def api_error(request: Any, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        if exc.status != 429:  # 429s are counted where they are raised
            metrics.requests.labels(request.url.path, str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Any, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        e = ApiError(exc.status_code, exc.detail if exc.status_code != 404 else f"no route {request.url.path}",
                     code="not_found" if exc.status_code == 404 else "method_not_allowed")
        return JSONResponse(e.body(), status_code=e.status, headers=dict(exc.headers or {}))

    async def server_error(request: Any, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"fields": {"path": request.url.path}})
        body = {"error": {"message": f"internal error: {type(exc).__name__}", "type": "server_error",
                          "param": None, "code": "internal_error"}}
        return JSONResponse(body, status_code=500)

    async def no_route(request: Request) -> Response:
        path = request.url.path
        if path in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
            raise ApiError(405, f"{request.method} is not allowed on {path}", code="method_not_allowed")
        raise ApiError(404, f"no route {request.method} {path}", code="not_found")

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/v1/{rest:path}", no_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        *web_routes(web_dir, model_dir),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(CrossOriginIsolation)],
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.hub = hub
    app.state.config = config
    return app
