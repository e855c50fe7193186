"""The WebSocket protocol at /ws (see docs/protocol.md): many requests in flight on one socket,
each with a client-chosen id, streamed token by token and cancellable."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Mapping

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import protocol as P
from .auth import api_key, authenticate
from .errors import ApiError, bad_request

PROTOCOL_VERSION = 1
FUNCTIONS = {
    "generate": "Stream a completion. params: 'messages' (chat) or 'prompt' (raw text), and the sampling "
                "fields of the OpenAI API (max_tokens, temperature, top_p, top_k, min_p, stop, seed, ...).",
    "cancel": "Cancel a generate in flight on this socket. params: {'id': <its id>}.",
    "health": "Whether the model is ready, and the scheduler's load.",
    "metadata": "This description, and the served model.",
}


def _frame(id_: Any, status: str, data: Any = None, error: ApiError | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {"id": id_, "status": status, "data": data}
    if error is not None:
        f["error"] = {"code": error.code or error.type, "message": error.message}
        if "Retry-After" in error.headers:
            f["error"]["retry_after_s"] = int(error.headers["Retry-After"])
    return f


async def websocket_endpoint(ws: WebSocket) -> None:
    hub = ws.app.state.hub
    config = ws.app.state.config
    try:
        tenant = authenticate(config, api_key(ws.headers, ws.query_params))
    except ApiError as e:  # refuse the upgrade: HTTP 401 with the JSON error, where the server can
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(JSONResponse(e.body(), status_code=e.status, headers=e.headers))
        else:
            await ws.close(code=1008, reason=e.message[:120])
        return
    await ws.accept()
    lock = asyncio.Lock()
    jobs: dict[Any, Any] = {}  # id -> Job, this socket's requests in flight
    tasks: set[asyncio.Task[None]] = set()

    async def send(frame: dict[str, Any]) -> None:
        await send_raw(json.dumps(frame, ensure_ascii=False))

    async def send_raw(text: str) -> None:
        async with lock:
            await ws.send_text(text)

    async def run(id_: Any, job: Any) -> None:
        t0 = time.perf_counter()
        text, n, ids = "", 0, []
        head = '{"id":' + json.dumps(id_, ensure_ascii=False) + ',"status":"streaming","data":{"text":'
        try:
            async for _, d in job.events():
                text += d.text
                ids += d.token_ids
                for k, tok in enumerate(d.token_ids):  # one frame per token, from a template (the hot path)
                    last = k == len(d.token_ids) - 1
                    piece = json.dumps(d.text if last else "", ensure_ascii=False)
                    is_final = "true" if d.finished and last else "false"
                    await send_raw(f'{head}{piece},"index":{n},"token_id":{tok},"is_final":{is_final}}}}}')
                    n += 1
            final = {"text": text, "tokens_generated": n, "prompt_tokens": job.req.prompt_tokens(),
                     "time_ms": round((time.perf_counter() - t0) * 1e3, 1),
                     "finish_reason": job.finish.get(0), "token_ids": ids,
                     "prompt_token_ids": job.req.prompts[0]}
            if job.finish.get(0) == "error":
                await send(_frame(id_, "error", final, ApiError(500, "the engine failed while generating this "
                                                                     "request", code="engine_error")))
            else:
                await send(_frame(id_, "cancelled" if job.finish.get(0) == "abort" else "complete", final))
        except ApiError as e:
            await send(_frame(id_, "error", None, e))
        except (WebSocketDisconnect, RuntimeError):
            pass  # the socket is gone: the job was closed by leaving events()
        finally:
            jobs.pop(id_, None)

    def start(id_: Any, params: Any) -> None:
        if not isinstance(params, dict):
            raise bad_request("'params' must be an object", "params", "invalid_type")
        model = hub.model
        body = {"model": hub.model_id, **params, "stream": True}
        if "messages" in params and "prompt" in params:
            raise bad_request("pass 'messages' or 'prompt', not both", "params")
        if "messages" in params:
            req = P.parse_chat(body, model)
        elif "prompt" in params:
            req = P.parse_completion(body, model, model.info.vocab_size)
        else:
            raise bad_request("generate needs params.messages (chat) or params.prompt (text)", "params",
                              "missing_required_parameter")
        if req.n != 1 or len(req.prompts) != 1:
            raise bad_request("one prompt and n = 1 per generate on the WebSocket", "params")
        job = hub.submit(tenant, req, "/ws")
        jobs[id_] = job
        t = asyncio.get_running_loop().create_task(run(id_, job))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    async def handle(msg: Mapping[str, Any]) -> None:
        if msg.get("type") == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        if msg.get("bytes") is not None:
            await send(_frame(None, "error", None, bad_request("binary frames are not part of the protocol: send JSON "
                                                                "text frames", None, "binary_frame")))
            return
        try:
            frame = json.loads(msg.get("text") or "")
        except json.JSONDecodeError as e:
            await send(_frame(None, "error", None, bad_request(f"the frame is not JSON: {e}", None, "invalid_json")))
            return
        id_ = frame.get("id") if isinstance(frame, dict) else None
        try:
            if not isinstance(frame, dict):
                raise bad_request("a frame is a JSON object", None, "invalid_frame")
            if not isinstance(id_, (str, int)) or isinstance(id_, bool):
                raise bad_request("every frame needs an 'id' (a string or an integer)", "id", "missing_id")
            unknown = set(frame) - {"id", "function", "params", "tenant_id"}
            if unknown:
                raise bad_request(f"unknown frame fields {sorted(unknown)}", None, "invalid_frame")
            tid = frame.get("tenant_id")
            if tid is not None and tid != tenant.name and not config.open:
                raise ApiError(403, "tenant_id does not match the API key", code="forbidden")
            fn = frame.get("function")
            if fn == "generate":
                if id_ in jobs:
                    raise bad_request(f"a request with id {id_!r} is already in flight", "id", "duplicate_id")
                start(id_, frame.get("params", {}))
            elif fn == "cancel":
                params = frame.get("params") or {}
                target = params.get("id") if isinstance(params, dict) else None
                job = jobs.get(target)
                if job is None:
                    raise ApiError(404, f"no request {target!r} in flight on this socket", code="not_found")
                job.cancel()
                await send(_frame(id_, "complete", {"cancelled": target}))
            elif fn == "health":
                await send(_frame(id_, "complete", hub.health()))
            elif fn == "metadata":
                info = hub.model.info
                await send(_frame(id_, "complete", {
                    "protocol": PROTOCOL_VERSION, "functions": FUNCTIONS, "tenant": tenant.name,
                    "model": {"id": info.id, "architecture": info.architecture, "vocab_size": info.vocab_size,
                              "max_length": info.max_length, "dtype": info.dtype, "device": info.device}}))
            else:
                raise bad_request(f"unknown function {fn!r}; one of {sorted(FUNCTIONS)}", "function",
                                  "unknown_function")
        except ApiError as e:
            await send(_frame(id_, "error", None, e))

    try:
        while True:
            await handle(await ws.receive())
    except WebSocketDisconnect:
        pass
    finally:
        for job in list(jobs.values()):
            job.close()
        for t in list(tasks):
            t.cancel()
