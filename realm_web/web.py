"""Entry points for the JavaScript hosts (the browser worker and Node): they load this core in
Pyodide, hand it a bridge to onnxruntime-web (wasm/src/bridge.mjs) and call these functions with
JSON strings. Standard library only; nothing here imports `js`.
"""
from __future__ import annotations

import json
from typing import Any

from .engine import LLM, Completion, UnsupportedError
from .engines.ort_web import OrtWebEngine, bridge_config
from .lora import AdapterError
from .manifest import load_manifest
from .sampling import SamplingParams
from .scheduler import RequestOutput
from .speculative import SpeculativeConfig

_llm: LLM | None = None


def cancel_all() -> int:
    """Stop every request in progress or queued (the page's stop button): their streams end
    with finish_reason "abort" at the next step and their slots are freed. A stream started
    after this call is not affected. Returns how many there were."""
    return _llm.abort_all() if _llm is not None else 0


def abort_all() -> int:
    """Abort every request, running or queued (the host's close); see cancel_all."""
    return _need().abort_all()


_OPTION_NAMES = {"maxTokens": "max_tokens", "topP": "top_p", "topK": "top_k", "minP": "min_p",
                 "repetitionPenalty": "repetition_penalty", "stopTokenIds": "stop_token_ids",
                 "ignoreEos": "ignore_eos", "topLogprobs": "top_logprobs", "promptLogprobs": "prompt_logprobs",
                 "responseFormat": "response_format", "jsonSchema": "json_schema"}
_SAMPLING = {"temperature", "max_tokens", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "stop",
             "stop_token_ids", "ignore_eos", "logprobs", "top_logprobs", "prompt_logprobs", "response_format",
             "json_schema", "regex", "choice"}
_HOST_ONLY = {"backend", "threads", "dtype", "raw", "system", "adapter"}


def config(model_dir: str, backend: str, dtype: str | None = None) -> str:
    """JSON: which ONNX file `backend` should load and how its KV cache looks."""
    return json.dumps(bridge_config(load_manifest(model_dir), dtype or None, backend))


def start(model_dir: str, bridge: Any, options: str = "{}") -> str:
    """Create the model over `bridge`; returns JSON facts about it."""
    global _llm
    opts = json.loads(options)
    engine = OrtWebEngine(load_manifest(model_dir), bridge, backend=str(opts.get("backend", "wasm")),
                          dtype=opts.get("dtype"), max_slots=int(opts.get("maxSlots", 4)),
                          max_length=opts.get("maxLength"), max_loras=int(opts.get("maxLoras", 8)))
    _llm = LLM(engine=engine, max_tokens_per_step=int(opts.get("maxTokensPerStep", 256)),
               speculative=_speculative(opts.get("speculative")), prefix_caching=bool(opts.get("prefixCaching", False)))
    m = _llm.manifest
    spec = _llm.speculative
    return json.dumps({"name": m.name, "max_length": engine.max_length, "eos_token_ids": m.eos_token_ids,
                       "adapters": engine.caps.adapters, "max_loras": engine.max_loras,
                       "speculative": spec.to_json() if spec else None,
                       "prefix_caching": _llm.scheduler.prefix_caching})


def calibrate(costs: str) -> None:
    """Seed the speculative policy's cost model with the bridge's measured step costs (JSON
    from bridge.mjs `calibrate()`: {run_seconds, token_seconds}); the hosts call it after
    `start` when speculation is on, before any request."""
    _need().scheduler.calibrate(**{k: float(v) for k, v in json.loads(costs).items()
                                   if k in ("run_seconds", "token_seconds", "draft_seconds")})


def _speculative(value: Any) -> SpeculativeConfig | None:
    """The JS option (camelCase keys, as everywhere in JS) -> SpeculativeConfig."""
    if isinstance(value, dict):
        names = {"numSpeculativeTokens": "num_speculative_tokens", "draftModel": "draft_model",
                 "draftDtype": "draft_dtype", "ngramMin": "ngram_min", "ngramMax": "ngram_max"}
        value = {names.get(k, k): v for k, v in value.items()}
    return SpeculativeConfig.of(value)


def prefix_stats() -> str:
    """JSON: prefix-cache hits, the prompt tokens they skipped, and all prompt tokens admitted."""
    return json.dumps(_need().scheduler.prefix_stats)


def speculative_stats() -> str:
    """JSON: the speculative counters (draft, accepted, emitted tokens, verify steps)."""
    s = _need().scheduler.spec_stats
    return json.dumps(s)


def load_adapter(name: str, path: str) -> str:
    """Load a LoRA adapter (a PEFT directory or GGUF LoRA file in Pyodide's file system) under
    `name` for requests' `adapter` option. Returns JSON {"adapter": {name, rank, targets}}, or
    {"error": {type, message, field}} for one it cannot take (AdapterError and its kinds,
    UnsupportedError: the export has no LoRA graph), so the host can raise a typed error."""
    llm = _need()
    try:
        llm.load_adapter(name, path)
    except (AdapterError, UnsupportedError, ValueError) as e:
        return _error(e)
    a = llm.scheduler.router.adapters[name]
    return json.dumps({"adapter": {"name": name, "rank": a.rank, "targets": list(a.targets)}})


def unload_adapter(name: str) -> str:
    """Forget an adapter: JSON {} or {"error": ...} (AdapterNotFound, AdapterInUse while
    requests use it)."""
    try:
        _need().unload_adapter(name)
    except AdapterError as e:
        return _error(e)
    return "{}"


def _error(e: Exception) -> str:
    return json.dumps({"error": {"type": type(e).__name__, "message": str(e), "field": getattr(e, "field", None)}})


def adapters() -> str:
    """JSON list of the loaded adapters' names."""
    return json.dumps(_need().adapters())


def _params(options: dict[str, Any]) -> SamplingParams:
    kw: dict[str, Any] = {}
    for k, v in options.items():
        name = _OPTION_NAMES.get(k, k)
        if name in _SAMPLING:
            kw[name] = v
        elif name not in _HOST_ONLY:
            raise ValueError(f"unknown option {k!r}")
    return SamplingParams(**kw)


def _adapter(options: dict[str, Any]) -> str | None:
    a = options.get("adapter")
    if a is not None and not isinstance(a, str):
        raise ValueError(f"option 'adapter' must be an adapter's name (a string) or null, got {a!r}")
    return a


def _result(c: Completion) -> str:
    out: dict[str, Any] = {"text": c.text, "tokenIds": c.token_ids, "promptTokenIds": c.prompt_token_ids,
                           "finishReason": c.finish_reason, "usage": c.usage, "timings": c.timings}
    if c.logprobs is not None:
        out["logprobs"] = c.logprobs
    if c.top_logprobs is not None:
        out["topLogprobs"] = c.top_logprobs
    if c.prompt_logprobs is not None:
        out["promptLogprobs"] = c.prompt_logprobs
        out["promptTopLogprobs"] = c.prompt_top_logprobs
    return json.dumps(out)


def _need() -> LLM:
    if _llm is None:
        raise RuntimeError("call start() first")
    return _llm


async def generate(prompt: str, options: str = "{}") -> str:
    """prompt: JSON of a string or a list of chat messages. Returns the completion as JSON."""
    llm = _need()
    opts = json.loads(options)
    c = (await llm.agenerate(json.loads(prompt), _params(opts), raw=bool(opts.get("raw")), system=opts.get("system"),
                             adapter=_adapter(opts)))[0]
    return _result(c)


async def stream(prompt: str, options: str, on_delta: Any, cancelled: Any = None) -> str:
    """Like generate, calling on_delta(json) for every delta ({text, tokenIds, finishReason});
    cancel_all(), or `cancelled()` (a host function) turning true, stops it at the next token."""
    llm = _need()
    opts = json.loads(options)
    ids = llm.encode_prompt(json.loads(prompt), raw=bool(opts.get("raw")), system=opts.get("system"))
    params = _params(opts)

    def send(d: RequestOutput) -> None:
        on_delta(json.dumps({"text": d.text, "tokenIds": d.token_ids, "finishReason": d.finish_reason}))

    stop = (lambda: bool(cancelled())) if cancelled is not None else None
    return _result(await llm.collect(ids, params, send, stop, adapter=_adapter(opts)))
