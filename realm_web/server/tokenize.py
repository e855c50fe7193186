"""Tokenizer endpoints in vLLM's shapes: POST /tokenize, POST /detokenize, GET /tokenizer_info.

/tokenize takes {"prompt": text} (as /v1/completions encodes it) or {"messages": [...]} (as
/v1/chat/completions does, with `add_generation_prompt`, default true), plus
`add_special_tokens` (default false: the ids the completion paths use, so `count` is their
`usage.prompt_tokens`) and an optional `model` (the base or an adapter the tenant may use);
it answers {"count", "max_model_len", "tokens", "token_strs"}. /detokenize takes {"tokens"} and
answers {"prompt"}. Both need the same API key as the completion endpoints."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import protocol as P
from .auth import api_key, authenticate
from .body import read_json
from .errors import ApiError
from .hub import Hub

_TOKENIZE = {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt", "return_token_strs"}
_DETOKENIZE = {"model", "tokens"}


async def tokenize(request: Request) -> Response:
    hub, config = request.app.state.hub, request.app.state.config
    body = await read_json(request, config)
    service = _checked(hub, request, body, _TOKENIZE)
    special = _flag(body, "add_special_tokens", False)
    strs = _flag(body, "return_token_strs", False)
    if ("prompt" in body) == ("messages" in body):
        raise ApiError(400, "give either 'prompt' (a string) or 'messages' (a list)", code="invalid_value",
                       param="prompt")
    try:
        if "prompt" in body:
            prompt = body["prompt"]
            if not isinstance(prompt, str) or not prompt:
                raise ApiError(400, "'prompt' must be a non-empty string", code="invalid_type", param="prompt")
            ids = service.tokenize(P.check_text(prompt, "prompt"), add_special_tokens=special)
        else:
            msgs = P.parse_messages(body.get("messages"))
            ids = service.tokenize(msgs, add_special_tokens=special,
                                   add_generation_prompt=_flag(body, "add_generation_prompt", True))
    except ValueError as e:
        raise ApiError(400, str(e), code="invalid_value", param="prompt" if "prompt" in body else "messages") from None
    return JSONResponse({"count": len(ids), "max_model_len": service.info.max_length, "tokens": ids,
                         "token_strs": service.token_texts(ids) if strs else None})


async def detokenize(request: Request) -> Response:
    hub, config = request.app.state.hub, request.app.state.config
    body = await read_json(request, config)
    service = _checked(hub, request, body, _DETOKENIZE)
    toks = body.get("tokens")
    v = service.info.vocab_size
    if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < v for t in toks):
        raise ApiError(400, f"'tokens' must be a list of integers in [0, {v})", code="invalid_value", param="tokens")
    return JSONResponse({"prompt": service.decode(toks)})


async def tokenizer_info(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    authenticate(request.app.state.config, api_key(request.headers))
    return JSONResponse(hub.model.tokenizer_info())


def _checked(hub: Hub, request: Request, body: Any, allowed: set[str]) -> Any:
    """The service, once the key, the body's fields and its `model` (if given) pass."""
    tenant = authenticate(request.app.state.config, api_key(request.headers))
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", code="unknown_parameter",
                       param=unknown[0])
    service = hub.model
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' must be a model id from GET /v1/models", code="invalid_type", param="model")
        hub.check_model(tenant, P.check_name(model, "model"))
    return service


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    v = body.get(key, default)
    if not isinstance(v, bool):
        raise ApiError(400, f"'{key}' must be a boolean", code="invalid_type", param=key)
    return v
