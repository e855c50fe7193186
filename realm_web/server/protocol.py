"""OpenAI-compatible request parsing and response shapes (pure functions, no I/O).

A request body becomes a `GenRequest`: prompt token ids, one SamplingParams per choice, and
how to answer (streamed or not, usage, logprobs). Every malformed or unsupported field is an
ApiError 400 naming the field, as OpenAI does ("Unrecognized request argument supplied: x").
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from ..sampling import MAX_LOGPROBS, SamplingError, SamplingParams, random_seed
from ..scheduler import RequestOutput
from .errors import ApiError, bad_request
from .logprobs import ChoiceLogprobs, TokenBytes, merge
from .structured import EXTENSIONS, Tools, output_format, parse_tools
from ..structured import OutputFormat
from ..structured.tools import OPEN, parse_tool_calls

MAX_N = 8
MAX_STOP = 4
COMPLETION_DEFAULT_MAX = 16


class Model(Protocol):
    """What parsing needs from the served model (realm_web.LLM satisfies it)."""

    def encode_prompt(self, prompt: Any, *, system: str | None = None, raw: bool = False,
                      tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def check_format(self, fmt: OutputFormat) -> None: ...


@dataclass
class GenRequest:
    kind: str  # "chat" | "completion"
    model: str
    prompts: list[list[int]]  # one per prompt (completions may batch prompts)
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per position in the logprobs objects (server/logprobs.py)
    echo: list[str] = field(default_factory=list)  # completions: prompt text to put before each choice
    adapter: str | None = None
    tools: Tools | None = None  # chat: the functions the model may call (server/structured.py)
    max_tokens_given: bool = True  # else fit_context fills in the default (what fits, and the key allows)

    @property
    def choices(self) -> list[tuple[int, list[int], SamplingParams]]:
        """(choice index, prompt ids, params) for every choice; choice i of prompt j is j * n + i.
        Seeded requests give choice i the seed + i, so choices differ yet replay exactly."""
        out = []
        for j, ids in enumerate(self.prompts):
            for i in range(self.n):
                p = self.params
                if self.n > 1 or len(self.prompts) > 1:
                    p = p.with_seed((p.seed + j * self.n + i) if p.seed is not None else random_seed())
                out.append((j * self.n + i, ids, p))
        return out

    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


_COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
           "presence_penalty", "frequency_penalty", "logit_bias", "user", "top_k", "min_p",
           "repetition_penalty", "ignore_eos", "stop_token_ids", "adapter"}
_COMMON |= {"response_format"} | EXTENSIONS
_CHAT = _COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs",
                   "tools", "tool_choice", "parallel_tool_calls", "store", "metadata", "service_tier"}
_COMPLETION = _COMMON | {"prompt", "logprobs", "echo", "best_of", "suffix"}
_ROLES = {"system", "developer", "user", "assistant", "tool"}


# -- the edge: every byte and every string a client sends is checked here, once ---------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def decode_json(data: bytes | str, what: str = "the request body") -> Any:
    """Parse a request body or a WebSocket frame; anything that is not JSON (bad UTF-8, NaN or
    Infinity, numbers too long, nesting too deep) is a 400 `invalid_json`."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise bad_request(f"{what} is JSON nested too deeply", None, "invalid_json") from None
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise bad_request(f"{what} is not valid JSON: {e}", None, "invalid_json") from None


def check_text(s: str, field: str) -> str:
    """Text the model reads: any Unicode but NUL, and no lone surrogates (they have no UTF-8)."""
    if "\x00" in s:
        raise bad_request(f"'{field}' contains a NUL character (U+0000)", field, "invalid_text")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(f"'{field}' contains a lone surrogate (U+{ord(s[e.start]):04X}) at index {e.start}: "
                          "text must be valid Unicode", field, "invalid_text") from None
    return s


def check_name(s: str, field: str) -> str:
    """An identifier (model, adapter, request id): valid text without control characters."""
    check_text(s, field)
    if any(c < " " or "\x7f" <= c < "\xa0" for c in s):
        raise bad_request(f"'{field}' contains a control character", field, "invalid_text")
    return s


def _get(body: Mapping[str, Any], key: str, types: tuple[type, ...], default: Any = None, *,
         what: str = "") -> Any:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in types:
        raise bad_request(f"'{key}' must be {what or types[0].__name__}, got {v!r}", key, "invalid_type")
    if not isinstance(v, types):
        raise bad_request(f"'{key}' must be {what or types[0].__name__}, got {type(v).__name__}", key, "invalid_type")
    if isinstance(v, str):
        check_text(v, key)
    return v


def _check_fields(body: Mapping[str, Any], allowed: set[str]) -> None:
    for k in body:
        if k not in allowed:
            raise bad_request(f"Unrecognized request argument supplied: {k}", k, "unknown_parameter")
    # accepted for compatibility and ignored, but still of the right type
    _get(body, "user", (str,), what="a string")
    _get(body, "service_tier", (str,), what="a string")
    _get(body, "store", (bool,), what="a boolean")
    _get(body, "parallel_tool_calls", (bool,), what="a boolean")
    meta = _get(body, "metadata", (dict,), {}, what="an object of strings")
    if any(not isinstance(v, str) for v in meta.values()):
        raise bad_request("'metadata' values must be strings", "metadata", "invalid_type")


def _sampling(body: Mapping[str, Any], default_max: int | None, min_tokens: int = 1) -> SamplingParams:
    for k in ("presence_penalty", "frequency_penalty"):
        v = _get(body, k, (int, float), 0.0, what="a number")
        if not -2.0 <= v <= 2.0:
            raise bad_request(f"'{k}' must be in [-2, 2], got {v}", k)
        if v != 0:
            raise bad_request(f"'{k}' is not supported; use 'repetition_penalty'", k, "unsupported_parameter")
    if _get(body, "logit_bias", (dict,), {}, what="an object"):
        raise bad_request("'logit_bias' is not supported", "logit_bias", "unsupported_parameter")
    max_tokens = _get(body, "max_completion_tokens", (int,), None, what="an integer")
    if max_tokens is None:
        max_tokens = _get(body, "max_tokens", (int,), None, what="an integer")
    if max_tokens is not None and max_tokens < min_tokens:
        raise bad_request(f"'max_tokens' must be at least {min_tokens}, got {max_tokens}", "max_tokens")
    temperature = _get(body, "temperature", (int, float), 1.0, what="a number")
    if not 0 <= temperature <= 2:
        raise bad_request(f"'temperature' must be in [0, 2], got {temperature}", "temperature")
    top_p = _get(body, "top_p", (int, float), 1.0, what="a number")
    if not 0 < top_p <= 1:
        raise bad_request(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise bad_request("'stop' must be a string or a list of strings", "stop", "invalid_type")
    for s in stops:
        check_text(s, "stop")
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise bad_request(f"'stop' takes up to {MAX_STOP} non-empty strings", "stop")
    seed = _get(body, "seed", (int,), None, what="an integer")
    try:
        return SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else (default_max or 0),
            temperature=float(temperature), top_p=float(top_p),
            top_k=_get(body, "top_k", (int,), 0, what="an integer"),
            min_p=float(_get(body, "min_p", (int, float), 0.0, what="a number")),
            repetition_penalty=float(_get(body, "repetition_penalty", (int, float), 1.0, what="a number")),
            seed=seed, stop=tuple(stops),
            stop_token_ids=tuple(_get(body, "stop_token_ids", (list,), [], what="a list of integers")),
            ignore_eos=_get(body, "ignore_eos", (bool,), False, what="a boolean"),
        )
    except SamplingError as e:
        raise bad_request(str(e)) from None


def _n(body: Mapping[str, Any]) -> int:
    n = _get(body, "n", (int,), 1, what="an integer")
    if not 1 <= n <= MAX_N:
        raise bad_request(f"'n' must be between 1 and {MAX_N}, got {n}", "n")
    return int(n)


def _stream_opts(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = _get(body, "stream", (bool,), False, what="a boolean")
    opts = _get(body, "stream_options", (dict,), {}, what="an object")
    if opts and not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    unknown = set(opts) - {"include_usage", "continuous_usage_stats", "include_obfuscation"}
    if unknown:
        raise bad_request(f"unknown stream_options {sorted(unknown)}", "stream_options")
    return stream, bool(opts.get("include_usage", False))


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: a model id from GET /v1/models", "model", "missing_required_parameter")
    return check_name(model, "model")


def _content(m: Mapping[str, Any], i: int) -> str:
    c = m.get("content")
    if c is None:
        if m.get("role") == "assistant":
            return ""
        raise bad_request(f"messages[{i}].content is required", f"messages[{i}].content")
    if isinstance(c, str):
        return check_text(c, f"messages[{i}].content")
    if isinstance(c, list):
        parts = []
        for j, part in enumerate(c):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"messages[{i}].content[{j}]: only text parts are supported",
                                  f"messages[{i}].content", "unsupported_content")
            parts.append(check_text(part["text"], f"messages[{i}].content[{j}].text"))
        return "".join(parts)
    raise bad_request(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content",
                      "invalid_type")


def _tool_calls(m: Mapping[str, Any], i: int) -> list[dict[str, Any]]:
    calls = m["tool_calls"]
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise bad_request(f"{where} must be a list", where, "invalid_type")
    out = []
    for j, c in enumerate(calls):
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(f.get("arguments", ""), str):
            raise bad_request(f"{where}[{j}] must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}",
                              f"{where}[{j}]", "invalid_value")
        out.append({"id": str(c.get("id", "")), "type": "function",
                    "function": {"name": check_text(f["name"], f"{where}[{j}].function.name"),
                                 "arguments": check_text(f.get("arguments", ""), f"{where}[{j}].function.arguments")}})
    return out


def parse_messages(msgs: Any) -> list[dict[str, Any]]:
    """A chat's `messages` -> [{"role", "content"}] (text parts joined; developer -> system), with
    an assistant's `tool_calls` and a tool result's `tool_call_id` kept."""
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("'messages' must be a non-empty list", "messages", "invalid_value")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise bad_request(f"messages[{i}].role must be one of {sorted(_ROLES)}, got {role!r}", f"messages[{i}].role")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": _content(m, i)}
        if role == "assistant" and m.get("tool_calls") is not None:
            msg["tool_calls"] = _tool_calls(m, i)
        if role == "tool":
            msg["tool_call_id"] = check_text(str(m.get("tool_call_id", "")), f"messages[{i}].tool_call_id")
        clean.append(msg)
    return clean


def parse_chat(body: Any, model: Model) -> GenRequest:
    """POST /v1/chat/completions body -> GenRequest."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None, "invalid_json")
    _check_fields(body, _CHAT)
    name = _model(body)
    clean = parse_messages(body.get("messages"))
    tools = parse_tools(body, model)
    fmt = output_format(body, model)
    if tools is not None and fmt is not None:
        raise bad_request("'response_format' together with 'tools' is not supported (set tool_choice 'none')",
                          "response_format", "unsupported_parameter")
    logprobs = _get(body, "logprobs", (bool,), False, what="a boolean")
    top = _get(body, "top_logprobs", (int,), None, what="an integer")
    if top is not None and not 0 <= top <= MAX_LOGPROBS:
        raise bad_request(f"'top_logprobs' must be between 0 and {MAX_LOGPROBS}, got {top}", "top_logprobs")
    if top and not logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    params = _sampling(body, None)
    stream, usage = _stream_opts(body)
    try:
        ids = model.encode_prompt(clean, tools=tools.functions if tools else None)
    except (ValueError, TypeError) as e:
        raise bad_request(str(e), "messages") from None
    given = body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None
    params = replace(params, logprobs=logprobs, top_logprobs=top or 0,
                     output_format=tools.output_format() if tools else fmt)
    return GenRequest("chat", name, [ids], params, n=_n(body),
                      stream=stream, include_usage=usage, logprobs=logprobs, top_logprobs=top or 0,
                      adapter=_adapter(body), tools=tools, max_tokens_given=given)


def parse_completion(body: Any, model: Model, vocab_size: int) -> GenRequest:
    """POST /v1/completions body -> GenRequest (prompt: text, token ids, or a list of either)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None, "invalid_json")
    _check_fields(body, _COMPLETION)
    name = _model(body)
    p = body.get("prompt")
    if isinstance(p, str) or (isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)):
        items: list[Any] = [p]
    elif isinstance(p, list) and p and all(isinstance(x, (str, list)) for x in p):
        items = list(p)
    else:
        raise bad_request("'prompt' must be a non-empty string, a list of token ids, or a list of either",
                          "prompt", "invalid_type")
    if len(items) > MAX_N:
        raise bad_request(f"up to {MAX_N} prompts per request", "prompt")
    prompts, echo = [], []
    for x in items:
        if isinstance(x, str):
            if not x:
                raise bad_request("'prompt' must not be empty", "prompt")
            try:
                prompts.append(model.encode_prompt(check_text(x, "prompt"), raw=True))
            except (ValueError, TypeError) as e:
                raise bad_request(str(e), "prompt") from None
            echo.append(x)
        else:
            if not x or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in x):
                raise bad_request(f"token id prompts must be non-empty lists of integers in [0, {vocab_size})", "prompt")
            prompts.append([int(t) for t in x])
            echo.append(model.decode(prompts[-1]))
    if body.get("suffix"):
        raise bad_request("'suffix' is not supported", "suffix", "unsupported_parameter")
    if _get(body, "best_of", (int,), 1, what="an integer") != 1:
        raise bad_request("'best_of' other than 1 is not supported; use 'n'", "best_of", "unsupported_parameter")
    lp = _get(body, "logprobs", (int,), None, what="an integer")
    if lp is not None and not 0 <= lp <= MAX_LOGPROBS:
        raise bad_request(f"'logprobs' must be between 0 and {MAX_LOGPROBS}, got {lp}", "logprobs")
    params = _sampling(body, COMPLETION_DEFAULT_MAX, min_tokens=0)
    stream, usage = _stream_opts(body)
    do_echo = _get(body, "echo", (bool,), False, what="a boolean")
    params = replace(params, logprobs=lp is not None, top_logprobs=lp or 0,
                     prompt_logprobs=lp if lp is not None and do_echo else None,
                     output_format=output_format(body, model))
    return GenRequest("completion", name, prompts, params, n=_n(body),
                      stream=stream, include_usage=usage, logprobs=lp is not None, top_logprobs=lp or 0,
                      echo=echo if do_echo else [], adapter=_adapter(body),
                      max_tokens_given=body.get("max_tokens") is not None)


def _adapter(body: Mapping[str, Any]) -> str | None:
    """realm-web's `adapter` field: a LoRA adapter by name, with `model` the base (the usual way,
    as vLLM's, is `model` = the adapter's name; the hub resolves both)."""
    a = _get(body, "adapter", (str,), None, what="a string")
    return check_name(a, "adapter") if a is not None else None


def fit_context(req: GenRequest, max_length: int, tenant_max: int = 0) -> None:
    """Check prompts against the context and set max_tokens to what fits when the client gave none."""
    longest = max(len(p) for p in req.prompts)
    if longest >= max_length:
        raise ApiError(400, f"This model's maximum context length is {max_length} tokens; the prompt has {longest} "
                            "tokens. Shorten it.", code="context_length_exceeded", param="messages"
                       if req.kind == "chat" else "prompt")
    room = max_length - longest
    p = req.params
    if not req.max_tokens_given:  # chat: as much as the context allows; completions: 16 (OpenAI's default)
        cap = room if req.kind == "chat" else min(room, COMPLETION_DEFAULT_MAX)
        req.params = p = replace(p, max_tokens=min(cap, tenant_max) if tenant_max else cap)
        return
    if tenant_max and p.max_tokens > tenant_max:
        raise bad_request(f"'max_tokens' is {p.max_tokens}; this API key allows up to {tenant_max} per request",
                          "max_tokens", "max_tokens_exceeded")
    if p.max_tokens > room:
        raise ApiError(400, f"This model's maximum context length is {max_length} tokens; the prompt has {longest} "
                            f"and max_tokens asks for {p.max_tokens} more. Lower max_tokens to {room} or less.",
                       code="context_length_exceeded", param="max_tokens")


# -- responses --------------------------------------------------------------------------------
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(kind: str, rid: str, model: str, created: int | None = None, chunk: bool = False) -> dict[str, Any]:
    obj = ("chat.completion.chunk" if chunk else "chat.completion") if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created or int(time.time()), "model": model,
            "system_fingerprint": None}


def timeout_error(limit_s: float) -> ApiError:
    return ApiError(408, f"the request ran longer than the server's request timeout ({limit_s:g} s) and was "
                         "stopped; ask for fewer tokens", code="request_timeout")


def sse(obj: Any) -> bytes:
    """One server-sent event carrying `obj` as JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
ENGINE_FAILED = "the engine failed while generating this request"


def _logprobs(req: GenRequest, i: int, lp: ChoiceLogprobs, d: RequestOutput, first: bool) -> dict[str, Any] | None:
    """The logprobs object of delta `d` of a choice (its first delta: with an echoed prompt's)."""
    if not req.logprobs:
        return None
    ids: list[int] = []
    lps: list[float | None] = []
    tops: list[Any] = []
    if first and req.kind == "completion" and req.echo:
        if d.prompt_logprobs is None:
            raise ApiError(500, "the engine returned no prompt logprobs", code="engine_error")
        ids += req.prompts[i // req.n]
        lps += d.prompt_logprobs
        tops += d.prompt_top_logprobs or [None] * len(d.prompt_logprobs)
    ids += d.token_ids
    lps += d.logprobs or [None] * len(d.token_ids)
    tops += d.top_logprobs or [None] * len(d.token_ids)
    return lp.part(ids, lps, tops) if ids or first else None


def tool_call(name: str, arguments: str) -> dict[str, Any]:
    """One entry of OpenAI's `tool_calls`."""
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function", "function": {"name": name, "arguments": arguments}}


class ChunkWriter:
    """The server-sent events of one streamed request: `chat.completion.chunk`s or streamed
    `text_completion`s, choice by choice, as OpenAI sends them."""

    def __init__(self, req: GenRequest, token_bytes: TokenBytes) -> None:
        self.req = req
        self.lp = [ChoiceLogprobs(req.kind == "chat", req.top_logprobs, token_bytes) for _ in req.choices]
        self.chat = req.kind == "chat"
        self.base = envelope(req.kind, new_id(req.kind), req.model, int(time.time()), chunk=True)
        self.extra = {"usage": None} if req.include_usage else {}
        self.started: set[int] = set()
        # the common chunk (some text, not the last, no logprobs) from a template: the hot path
        self._head = sse({**self.base, "choices": [{"index": 0}]})[: -len(b'0}]}\n\n')].decode()
        self._tail = ',"usage":null}' if req.include_usage else "}"
        self._key = '"delta":{"content":' if self.chat else '"text":'
        self._close = "}" if self.chat else ""
        # with tools: a choice's text is held while it may still be a tool call (it is sent as
        # text as soon as it cannot be one)
        self.held: dict[int, tuple[str, dict[str, Any] | None]] = {}
        self.free: set[int] = set()

    def chunks(self, i: int, d: RequestOutput) -> Iterator[bytes]:
        """The events for delta `d` of choice `i` (none, one, or a role chunk first)."""
        if d.finish_reason == "error":
            yield sse(ApiError(500, ENGINE_FAILED, code="engine_error").body())
            return
        text = d.text
        first = i not in self.started
        if first:
            self.started.add(i)
            if self.chat:
                yield sse({**self.base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                      "logprobs": None, "finish_reason": None}], **self.extra})
            elif self.req.echo:
                text = self.req.echo[i // self.req.n] + text
        lp = _logprobs(self.req, i, self.lp[i], d, first)
        if self.req.tools is not None and i not in self.free:
            held, held_lp = self.held.get(i, ("", None))
            held, held_lp = held + text, merge(held_lp, lp)
            head = held.lstrip()
            if not d.finished and (not head or OPEN.startswith(head) or head.startswith(OPEN)):
                self.held[i] = (held, held_lp)  # may still be a tool call: wait
                return
            self.held.pop(i, None)
            if not d.finished:
                self.free.add(i)  # plain text: stream it from here on
                text, lp = held, held_lp
            else:
                yield from self._tool_end(i, held, held_lp, d.finish_reason)
                return
        if text and not d.finished and lp is None:
            yield (f'{self._head}{i},{self._key}{json.dumps(text, ensure_ascii=False)}{self._close},'
                   f'"logprobs":null,"finish_reason":null}}]{self._tail}\n\n').encode()
            return
        if text or d.finished or lp:
            choice: dict[str, Any] = {"index": i, "delta": {"content": text} if text else {}} if self.chat else \
                {"index": i, "text": text}
            choice.update(logprobs=lp, finish_reason=d.finish_reason)
            yield sse({**self.base, "choices": [choice], **self.extra})

    def _tool_end(self, i: int, text: str, lp: dict[str, Any] | None, reason: str | None) -> Iterator[bytes]:
        """A held choice's last chunks: its text, its tool calls, its finish."""
        assert self.req.tools is not None
        rest, calls = parse_tool_calls(text, self.req.tools.names)
        if rest or lp:
            yield sse({**self.base, "choices": [{"index": i, "delta": {"content": rest} if rest else {},
                                                  "logprobs": lp, "finish_reason": None}], **self.extra})
        if calls:
            deltas = [{"index": k, **tool_call(name, args)} for k, (name, args) in enumerate(calls)]
            yield sse({**self.base, "choices": [{"index": i, "delta": {"tool_calls": deltas}, "logprobs": None,
                                                  "finish_reason": None}], **self.extra})
        yield sse({**self.base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                              "finish_reason": "tool_calls" if calls and reason == "stop" else reason}],
                   **self.extra})

    def usage(self, completion_tokens: int) -> bytes:
        """The last chunk with stream_options.include_usage: no choices, the request's usage."""
        return sse({**self.base, "choices": [], "usage": usage(self.req.prompt_tokens(), completion_tokens)})


class ChoiceText:
    """What each choice of a request produced, gathered from its deltas, for the one JSON
    response of a request that is not streamed."""

    def __init__(self, req: GenRequest) -> None:
        n = len(req.choices)
        self.req = req
        self.text = [""] * n
        self.lps: list[dict[str, Any] | None] = [None] * n
        self.started: set[int] = set()
        self.lp: list[ChoiceLogprobs] = []

    def add(self, i: int, d: RequestOutput, token_bytes: TokenBytes) -> None:
        self.text[i] += d.text
        if self.req.logprobs:
            if not self.lp:
                self.lp = [ChoiceLogprobs(self.req.kind == "chat", self.req.top_logprobs, token_bytes)
                           for _ in self.text]
            first = i not in self.started
            self.started.add(i)
            self.lps[i] = merge(self.lps[i], _logprobs(self.req, i, self.lp[i], d, first))

    def body(self, finish: Mapping[int, str | None], completion_tokens: int) -> dict[str, Any]:
        req = self.req
        out = envelope(req.kind, new_id(req.kind), req.model)
        choices = []
        for i in range(len(self.text)):
            lp = self.lps[i] if req.logprobs else None
            if lp is None and req.logprobs:
                lp = {"content": []} if req.kind == "chat" else \
                    {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            if req.kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": self.text[i], "refusal": None}
                reason = finish.get(i)
                if req.tools is not None:
                    rest, calls = parse_tool_calls(self.text[i], req.tools.names)
                    if calls:
                        message.update(content=rest or None, tool_calls=[tool_call(n, a) for n, a in calls])
                        reason = "tool_calls" if reason == "stop" else reason
                choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": reason})
            else:
                echo = req.echo[i // req.n] if req.echo else ""
                choices.append({"index": i, "text": echo + self.text[i], "finish_reason": finish.get(i), "logprobs": lp})
        out["choices"] = choices
        out["usage"] = usage(req.prompt_tokens(), completion_tokens)
        return out
