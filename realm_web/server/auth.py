"""API keys: where a request carries one, and which tenant it names."""
from __future__ import annotations

from typing import Any

from .config import ServerConfig, Tenant
from .errors import ApiError


def api_key(headers: Any, query: Any = None) -> str | None:
    """The key of `Authorization: Bearer <key>`, `X-Api-Key`, or (WebSocket) `?api_key=`."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return str(auth[7:].strip())
    key = headers.get("x-api-key") or (query.get("api_key") if query is not None else None)
    return str(key) if key else None


def authenticate(config: ServerConfig, key: str | None) -> Tenant:
    """The key's tenant; ApiError 401 for a missing or unknown key (an open server takes any)."""
    tenant = config.tenant_for_key(key)
    if tenant is None:
        raise ApiError(401, "Incorrect API key provided." if key else
                       "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    return tenant
