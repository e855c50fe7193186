"""Reading a request body: bounded in size and in time."""
from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from . import protocol as P
from .config import ServerConfig
from .errors import ApiError


async def read_json(request: Request, config: ServerConfig) -> Any:
    """The body as JSON: at most max_body_bytes, all of it within body_timeout_s (a client that
    trickles its body in gets 408, and holds no slot meanwhile)."""
    limit = config.max_body_bytes
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > limit):
        raise ApiError(413, f"the request body is larger than {limit} bytes", code="body_too_large")

    async def read() -> bytes:
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise ApiError(413, f"the request body is larger than {limit} bytes", code="body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        data = await asyncio.wait_for(read(), config.body_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {config.body_timeout_s:g} s",
                       code="body_timeout", headers={"Connection": "close"}) from None
    return P.decode_json(data)
