"""The WebSocket protocol at /ws (see docs/protocol.md): many requests in flight on one socket,
each with a client-chosen id, streamed token by token and cancellable.

A frame's failure is that frame's: bad input gets an error frame for its id, and anything
unexpected becomes an `internal_error` frame (logged with its traceback); the socket and the
other requests on it go on."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Mapping

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import protocol as P
from .auth import api_key, authenticate
from .config import ServerConfig, Tenant
from .errors import ApiError, bad_request
from .hub import Hub, Job

log = logging.getLogger("realm_web.server")

PROTOCOL_VERSION = 1
FUNCTIONS = {
    "generate": "Stream a completion. params: 'messages' (chat) or 'prompt' (raw text), and the sampling "
                "fields of the OpenAI API (max_tokens, temperature, top_p, top_k, min_p, stop, seed, ...).",
    "cancel": "Cancel a generate in flight on this socket. params: {'id': <its id>}.",
    "health": "Whether the model is ready, and the scheduler's load.",
    "metadata": "This description, and the served model.",
}
INTERNAL = "internal error while handling this frame; the socket and its other requests go on"


def _frame(id_: Any, status: str, data: Any = None, error: ApiError | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {"id": id_, "status": status, "data": data}
    if error is not None:
        f["error"] = {"code": error.code or error.type, "message": error.message}
        if "Retry-After" in error.headers:
            f["error"]["retry_after_s"] = int(error.headers["Retry-After"])
    return f


async def websocket_endpoint(ws: WebSocket) -> None:
    hub: Hub = ws.app.state.hub
    config: ServerConfig = ws.app.state.config
    try:
        tenant = authenticate(config, api_key(ws.headers, ws.query_params))
        if hub.draining:
            hub.model  # noqa: B018 - raises 503 shutting_down
    except ApiError as e:  # refuse the upgrade: HTTP 401/503 with the JSON error, where the server can
        ws.app.state.metrics.refused("/ws", e.status, e.code)
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(JSONResponse(e.body(), status_code=e.status, headers=e.headers))
        else:
            await ws.close(code=1008, reason=e.message[:120])
        return
    await ws.accept()
    await Session(ws, hub, config, tenant).serve()


class Session:
    """One socket: its requests in flight by id, and the tasks that stream them."""

    def __init__(self, ws: WebSocket, hub: Hub, config: ServerConfig, tenant: Tenant) -> None:
        self.ws, self.hub, self.config, self.tenant = ws, hub, config, tenant
        self.lock = asyncio.Lock()
        self.jobs: dict[Any, Job] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        try:
            while True:
                msg = await self.ws.receive()
                if msg.get("type") == "websocket.disconnect":
                    break
                await self.frame(msg)
        except WebSocketDisconnect:
            pass
        finally:  # the client went away: what it had in flight counts as cancelled
            for job in list(self.jobs.values()):
                job.abandon()
                job.close()
            for t in list(self.tasks):
                t.cancel()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(frame, ensure_ascii=False))

    async def send_raw(self, text: str) -> None:
        async with self.lock:
            await self.ws.send_text(text)

    async def refuse(self, id_: Any, e: ApiError) -> None:
        self.hub.metrics.refused("/ws", e.status, e.code)
        await self.send(_frame(id_, "error", None, e))

    async def frame(self, msg: Mapping[str, Any]) -> None:
        """One client frame -> its answer, or an error frame for its id; never a closed socket."""
        id_: Any = None
        try:
            if msg.get("bytes") is not None:
                raise bad_request("binary frames are not part of the protocol: send JSON text frames", None,
                                  "binary_frame")
            text = msg.get("text") or ""
            if len(text) > self.config.max_body_bytes:  # characters: at least as many bytes
                raise ApiError(413, f"the frame is larger than {self.config.max_body_bytes} bytes",
                               code="frame_too_large")
            frame = P.decode_json(text, "the frame")
            if not isinstance(frame, dict):
                raise bad_request("a frame is a JSON object", None, "invalid_frame")
            raw_id = frame.get("id")
            if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
                raise bad_request("every frame needs an 'id' (a string or an integer)", "id", "missing_id")
            if isinstance(raw_id, str):
                P.check_name(raw_id, "id")
            id_ = raw_id
            await self.dispatch(id_, frame)
        except ApiError as e:
            await self.refuse(id_, e)
        except (WebSocketDisconnect, asyncio.CancelledError):
            raise
        except Exception:  # noqa: BLE001 - this frame's failure, not the socket's
            log.exception("websocket frame failed", extra={"fields": {"id": repr(id_)}})
            await self.refuse(id_, ApiError(500, INTERNAL, code="internal_error"))

    async def dispatch(self, id_: Any, frame: dict[str, Any]) -> None:
        unknown = set(frame) - {"id", "function", "params", "tenant_id"}
        if unknown:
            raise bad_request(f"unknown frame fields {sorted(unknown)}", None, "invalid_frame")
        tid = frame.get("tenant_id")
        if tid is not None and tid != self.tenant.name and not self.config.open:
            raise ApiError(403, "tenant_id does not match the API key", code="forbidden")
        fn = frame.get("function")
        params = frame.get("params")
        if fn == "generate":
            if id_ in self.jobs:
                raise bad_request(f"a request with id {id_!r} is already in flight", "id", "duplicate_id")
            self.start(id_, {} if params is None else params)
        elif fn == "cancel":
            target = params.get("id") if isinstance(params, dict) else None
            if not isinstance(target, (str, int)) or isinstance(target, bool) or target not in self.jobs:
                raise ApiError(404, f"no request {target!r} in flight on this socket", code="not_found",
                               param="params.id")
            self.jobs[target].abandon()
            await self.send(_frame(id_, "complete", {"cancelled": target}))
        elif fn == "health":
            await self.send(_frame(id_, "complete", self.hub.health()))
        elif fn == "metadata":
            info = self.hub.model.info
            await self.send(_frame(id_, "complete", {
                "protocol": PROTOCOL_VERSION, "functions": FUNCTIONS, "tenant": self.tenant.name,
                "model": {"id": info.id, "architecture": info.architecture, "vocab_size": info.vocab_size,
                          "max_length": info.max_length, "dtype": info.dtype, "device": info.device},
                "adapters": [a for a in self.hub.models_for(self.tenant) if a is not None]}))
        else:
            raise bad_request(f"unknown function {fn!r}; one of {sorted(FUNCTIONS)}", "function", "unknown_function")

    def start(self, id_: Any, params: Any) -> None:
        if not isinstance(params, dict):
            raise bad_request("'params' must be an object", "params", "invalid_type")
        model = self.hub.model
        if "messages" in params and "prompt" in params:
            raise bad_request("pass 'messages' or 'prompt', not both", "params")
        body = {"model": self.hub.model_id, **params, "stream": True}
        if "messages" in params:
            req = P.parse_chat(body, model)
        elif "prompt" in params:
            req = P.parse_completion(body, model, model.info.vocab_size)
        else:
            raise bad_request("generate needs params.messages (chat) or params.prompt (text)", "params",
                              "missing_required_parameter")
        if req.n != 1 or len(req.prompts) != 1:
            raise bad_request("one prompt and n = 1 per generate on the WebSocket", "params")
        job = self.hub.submit(self.tenant, req, "/ws")
        self.jobs[id_] = job
        t = asyncio.get_running_loop().create_task(self.run(id_, job))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def run(self, id_: Any, job: Job) -> None:
        """Stream one generate: a frame per token, then its final frame."""
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
                    await self.send_raw(f'{head}{piece},"index":{n},"token_id":{tok},"is_final":{is_final}}}}}')
                    n += 1
            final = {"text": text, "tokens_generated": n, "prompt_tokens": job.req.prompt_tokens(),
                     "time_ms": round((time.perf_counter() - t0) * 1e3, 1),
                     "finish_reason": job.finish.get(0), "token_ids": ids,
                     "prompt_token_ids": job.req.prompts[0]}
            if job.finish.get(0) == "error":
                await self.send(_frame(id_, "error", final, ApiError(500, P.ENGINE_FAILED, code="engine_error")))
            elif job.timed_out:
                await self.send(_frame(id_, "error", final, P.timeout_error(self.config.request_timeout_s)))
            else:
                await self.send(_frame(id_, "cancelled" if job.finish.get(0) == "abort" else "complete", final))
        except (WebSocketDisconnect, RuntimeError, asyncio.CancelledError):
            pass  # the socket is gone: the job was closed by leaving events()
        except Exception:  # noqa: BLE001 - this request's failure, not the socket's
            log.exception("websocket stream failed", extra={"fields": {"id": repr(id_)}})
            try:
                await self.send(_frame(id_, "error", None, ApiError(500, INTERNAL, code="internal_error")))
            except Exception:  # noqa: BLE001 - the socket is gone
                pass
        finally:
            self.jobs.pop(id_, None)
