"""Python SDK for a realm-web server: HTTP (OpenAI-compatible, with SSE streaming) and the
WebSocket protocol, synchronous (`Client`) and asynchronous (`AsyncClient`).

    from realm_web.client import Client
    c = Client("http://127.0.0.1:8000", api_key="sk-...")
    print(c.chat("What is the capital of France?", temperature=0).text)
    for d in c.chat("Tell me a story", stream=True):
        print(d.text, end="")
    with c.websocket() as ws:
        print(ws.generate("What is the capital of France?", temperature=0).text)

The request bodies, the SSE parser and the frame decoding are shared plain functions; the two
classes differ only in the transport (httpx / websockets, sync or asyncio).
"""
from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence

import httpx


class RealmError(Exception):
    """An error answer from the server: HTTP status (0 on a WebSocket), code and message."""

    def __init__(self, status: int, code: str | None, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status or 'ws'} {code}: {message}")
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s


class AuthenticationError(RealmError):
    pass


class RateLimitError(RealmError):
    pass


class BadRequestError(RealmError):
    pass


@dataclass
class Delta:
    """A piece of a streamed answer."""

    text: str
    index: int = 0  # choice index (HTTP) or token position (WebSocket)
    token_id: int | None = None
    finish_reason: str | None = None


@dataclass
class Result:
    text: str
    finish_reason: str | None
    usage: dict[str, int] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


Prompt = str | Sequence[Mapping[str, Any]]


# -- shared, transport-free pieces ---------------------------------------------------------------
def _messages(prompt: Prompt) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def _error(status: int, body: Any, retry_after: str | None = None) -> RealmError:
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    msg = err.get("message") if isinstance(err, dict) else str(body)[:200]
    ra = float(retry_after) if retry_after else (err.get("retry_after_s") if isinstance(err, dict) else None)
    cls = {401: AuthenticationError, 429: RateLimitError, 400: BadRequestError}.get(status, RealmError)
    if status == 0 and code == "rate_limit_exceeded":
        cls = RateLimitError
    return cls(status, code, str(msg), ra)


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            body = r.json()
        except ValueError:
            body = r.text
        raise _error(r.status_code, body, r.headers.get("retry-after"))
    return r.json()


def _sse_events(line: str) -> Any:
    """One SSE line -> a decoded event, None (skip), or StopIteration's sentinel "[DONE]"."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    return "[DONE]" if data == "[DONE]" else json.loads(data)


def _delta(chat: bool, ev: Mapping[str, Any]) -> list[Delta]:
    if "error" in ev:
        raise _error(500, ev)
    out = []
    for c in ev.get("choices", []):
        text = (c.get("delta") or {}).get("content") or "" if chat else c.get("text") or ""
        if text or c.get("finish_reason"):
            out.append(Delta(text, c.get("index", 0), None, c.get("finish_reason")))
    return out


def _result(chat: bool, body: Mapping[str, Any]) -> Result:
    c = body["choices"][0]
    return Result(c["message"]["content"] if chat else c["text"], c.get("finish_reason"), body.get("usage", {}), dict(body))


def _ws_generate(id_: int, prompt: Prompt, raw: bool, params: Mapping[str, Any]) -> str:
    p = {("prompt" if raw else "messages"): prompt if raw else _messages(prompt), **params}
    return json.dumps({"id": id_, "function": "generate", "params": p})


def _ws_frame(frame: Mapping[str, Any]) -> Delta | Result:
    if frame["status"] == "error":
        e = frame.get("error") or {}
        raise _error(0, {"error": e})
    d = frame.get("data") or {}
    if frame["status"] == "streaming":
        return Delta(d.get("text", ""), d.get("index", 0), d.get("token_id"))
    return Result(d.get("text", ""), d.get("finish_reason"),
                  {"prompt_tokens": d.get("prompt_tokens", 0), "completion_tokens": d.get("tokens_generated", 0)},
                  dict(d))


def _ws_url(base: str, api_key: str | None) -> tuple[str, dict[str, str]]:
    url = base.replace("https://", "wss://").replace("http://", "ws://").rstrip("/") + "/ws"
    return url, ({"Authorization": f"Bearer {api_key}"} if api_key else {})


class _Base:
    def __init__(self, base_url: str, api_key: str | None, model: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._model = model

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _body(self, prompt: Prompt, raw: bool, stream: bool, model: str, params: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, **params, "stream": stream}
        if raw:
            body["prompt"] = prompt
        else:
            body["messages"] = _messages(prompt)
        return body


# -- synchronous -------------------------------------------------------------------------------
class Client(_Base):
    """Blocking client. `chat(..., stream=True)` returns an iterator of Delta."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 model: str | None = None, timeout: float = 120.0) -> None:
        super().__init__(base_url, api_key, model)
        self.http = httpx.Client(base_url=self.base_url, headers=self._headers(), timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        return dict(self.http.get("/health").json())

    def models(self) -> list[str]:
        return [m["id"] for m in _check(self.http.get("/v1/models"))["data"]]

    def model(self) -> str:
        if self._model is None:
            ids = self.models()
            if not ids:
                raise RealmError(404, "model_not_found", "this API key may use no model")
            self._model = ids[0]
        return self._model

    def chat(self, prompt: Prompt, *, stream: bool = False, **params: Any) -> Any:
        """Chat completion of a user string or a message list; sampling fields as in the OpenAI API."""
        return self._call(prompt, False, stream, params)

    def complete(self, prompt: str, *, stream: bool = False, **params: Any) -> Any:
        """Raw text completion (no chat template)."""
        return self._call(prompt, True, stream, params)

    def _call(self, prompt: Prompt, raw: bool, stream: bool, params: Mapping[str, Any]) -> Any:
        path = "/v1/completions" if raw else "/v1/chat/completions"
        body = self._body(prompt, raw, stream, params.get("model") or self.model(), params)
        if not stream:
            return _result(not raw, _check(self.http.post(path, json=body)))
        return self._stream(path, body, not raw)

    def _stream(self, path: str, body: Mapping[str, Any], chat: bool) -> Iterator[Delta]:
        with self.http.stream("POST", path, json=body) as r:
            if r.status_code >= 400:
                r.read()
                _check(r)
            for line in r.iter_lines():
                ev = _sse_events(line)
                if ev == "[DONE]":
                    return
                if ev is not None:
                    yield from _delta(chat, ev)

    def websocket(self) -> "WebSocketSession":
        return WebSocketSession(*_ws_url(self.base_url, self.api_key))


class WebSocketSession:
    """A blocking WebSocket session: one request at a time (AsyncWebSocketSession multiplexes)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        from websockets.sync.client import connect

        self.conn = connect(url, additional_headers=headers).__enter__()  # closed by __exit__
        self._ids = itertools.count(1)

    def __enter__(self) -> "WebSocketSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.conn.close()

    def call(self, function: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        id_ = next(self._ids)
        self.conn.send(json.dumps({"id": id_, "function": function, "params": dict(params or {})}))
        while True:
            f = json.loads(self.conn.recv())
            if f.get("id") == id_ and f["status"] != "streaming":
                r = _ws_frame(f)
                assert isinstance(r, Result)
                return r.raw

    def stream(self, prompt: Prompt, *, raw: bool = False, **params: Any) -> Iterator[Delta | Result]:
        """Yields a Delta per token, then the final Result."""
        id_ = next(self._ids)
        self.conn.send(_ws_generate(id_, prompt, raw, params))
        while True:
            f = json.loads(self.conn.recv())
            if f.get("id") != id_:
                continue
            item = _ws_frame(f)
            yield item
            if isinstance(item, Result):
                return

    def generate(self, prompt: Prompt, *, raw: bool = False, **params: Any) -> Result:
        last: Any = None
        for last in self.stream(prompt, raw=raw, **params):
            pass
        assert isinstance(last, Result)
        return last


# -- asynchronous ------------------------------------------------------------------------------
class AsyncClient(_Base):
    """asyncio client; `chat(..., stream=True)` returns an async iterator of Delta."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 model: str | None = None, timeout: float = 120.0) -> None:
        super().__init__(base_url, api_key, model)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers(), timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def health(self) -> dict[str, Any]:
        return dict((await self.http.get("/health")).json())

    async def models(self) -> list[str]:
        return [m["id"] for m in _check(await self.http.get("/v1/models"))["data"]]

    async def model(self) -> str:
        if self._model is None:
            ids = await self.models()
            if not ids:
                raise RealmError(404, "model_not_found", "this API key may use no model")
            self._model = ids[0]
        return self._model

    async def chat(self, prompt: Prompt, **params: Any) -> Result:
        return await self._call(prompt, False, params)

    async def complete(self, prompt: str, **params: Any) -> Result:
        return await self._call(prompt, True, params)

    async def _call(self, prompt: Prompt, raw: bool, params: Mapping[str, Any]) -> Result:
        path = "/v1/completions" if raw else "/v1/chat/completions"
        body = self._body(prompt, raw, False, params.get("model") or await self.model(), params)
        return _result(not raw, _check(await self.http.post(path, json=body)))

    async def stream_chat(self, prompt: Prompt, *, raw: bool = False, **params: Any) -> AsyncIterator[Delta]:
        path = "/v1/completions" if raw else "/v1/chat/completions"
        body = self._body(prompt, raw, True, params.get("model") or await self.model(), params)
        async with self.http.stream("POST", path, json=body) as r:
            if r.status_code >= 400:
                await r.aread()
                _check(r)
            async for line in r.aiter_lines():
                ev = _sse_events(line)
                if ev == "[DONE]":
                    return
                if ev is not None:
                    for d in _delta(not raw, ev):
                        yield d

    async def websocket(self) -> "AsyncWebSocketSession":
        s = AsyncWebSocketSession()
        await s.connect(*_ws_url(self.base_url, self.api_key))
        return s


class AsyncWebSocketSession:
    """Many requests in flight on one socket: a reader task routes frames to each request by id."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, url: str, headers: dict[str, str]) -> None:
        from websockets.asyncio.client import connect

        self.conn = await connect(url, additional_headers=headers)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.conn:
                f = json.loads(msg)
                q = self._queues.get(f.get("id"))
                if q is not None:
                    q.put_nowait(f)
        finally:
            for q in self._queues.values():
                q.put_nowait({"id": None, "status": "error", "error": {"code": "closed", "message": "socket closed"}})

    async def close(self) -> None:
        await self.conn.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> "AsyncWebSocketSession":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _send(self, id_: int, payload: str) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues[id_] = q
        await self.conn.send(payload)
        return q

    async def call(self, function: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        id_ = next(self._ids)
        q = await self._send(id_, json.dumps({"id": id_, "function": function, "params": dict(params or {})}))
        try:
            r = _ws_frame(await q.get())
            assert isinstance(r, Result)
            return r.raw
        finally:
            self._queues.pop(id_, None)

    async def stream(self, prompt: Prompt, *, raw: bool = False, **params: Any) -> AsyncIterator[Delta | Result]:
        """Yields a Delta per token, then the final Result; leaving early cancels the request."""
        id_ = next(self._ids)
        q = await self._send(id_, _ws_generate(id_, prompt, raw, params))
        done = False
        try:
            while not done:
                item = _ws_frame(await q.get())
                done = isinstance(item, Result)
                yield item
        finally:
            self._queues.pop(id_, None)
            if not done:
                await self.conn.send(json.dumps({"id": f"cancel-{id_}", "function": "cancel", "params": {"id": id_}}))

    async def generate(self, prompt: Prompt, *, raw: bool = False, **params: Any) -> Result:
        last: Any = None
        async for last in self.stream(prompt, raw=raw, **params):
            pass
        assert isinstance(last, Result)
        return last
