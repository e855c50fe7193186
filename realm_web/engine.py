"""The Engine protocol and the LLM facade that drives schedule -> run -> update.

Only this module's LLM awaits (with asyncio, which Pyodide has too); the scheduler and the
rest of the core are plain state machines.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping, Protocol, Sequence, Union

from .chat import ChatTemplate, load_chat_template
from .lora import AdapterError, AdapterNotFound, load_adapter as read_adapter
from .manifest import Manifest, Variant, load_manifest
from .sampling import SamplingParams
from .scheduler import RequestOutput, Scheduler
from .service import ModelInfo, ServiceStats, Sink
from .speculative import SpeculativeConfig
from .step import EngineCaps, StepPlan, StepResult
from .structured import OutputFormat
from .structured.tools import plain_tool_messages
from .tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger("realm_web")

Prompt = Union[str, Sequence[Mapping[str, Any]], Sequence[int]]  # raw text, chat messages, or token ids


class UnsupportedError(ValueError):
    """A request for something this engine does not serve (e.g. a LoRA adapter)."""


class Engine(Protocol):
    """Runs one step. The only thing in realm-web that touches a runtime."""

    manifest: Manifest
    variant: Variant  # the export it runs
    device: str
    max_slots: int
    max_length: int
    kv_capacity: int
    caps: EngineCaps
    step_thread: bool  # run() awaits a worker thread (else it computes inline)

    async def run(self, plan: StepPlan) -> StepResult: ...

    def run_sync(self, plan: StepPlan) -> StepResult: ...


@dataclass
class Completion:
    """The result of one prompt."""

    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str | None
    usage: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    logprobs: list[float] | None = None  # per output token (logprobs=True)
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per output token: (id, logprob) of the top N
    prompt_logprobs: list[float | None] | None = None  # per prompt token (prompt_logprobs=N); the first is None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None


class _Collector:
    """A sink that gathers one request's deltas into a Completion."""

    def __init__(self, prompt_ids: list[int], on_delta: Callable[[RequestOutput], None] | None = None,
                 t0: float | None = None) -> None:
        self.prompt_ids = prompt_ids
        self.on_delta = on_delta
        self.t0 = time.perf_counter() if t0 is None else t0
        self.t_first: float | None = None
        self.t_end: float | None = None
        self.ids: list[int] = []
        self.text = ""
        self.reason: str | None = None
        self.lps: list[float] | None = None
        self.tops: list[list[tuple[int, float]]] | None = None
        self.prompt: RequestOutput | None = None

    def __call__(self, d: RequestOutput) -> None:
        if d.token_ids and self.t_first is None:
            self.t_first = time.perf_counter()
        self.ids += d.token_ids
        self.text += d.text
        if d.logprobs is not None:
            self.lps = (self.lps or []) + d.logprobs
        if d.top_logprobs is not None:
            self.tops = (self.tops or []) + d.top_logprobs
        if d.prompt_logprobs is not None:
            self.prompt = d
        if d.finished:
            self.reason = d.finish_reason
            self.t_end = time.perf_counter()
        if self.on_delta is not None:
            self.on_delta(d)

    def completion(self) -> Completion:
        t1 = self.t_end or time.perf_counter()
        t_first = self.t_first or t1
        n = len(self.ids)
        decode_s = t1 - t_first
        return Completion(
            text=self.text, token_ids=self.ids, prompt_token_ids=self.prompt_ids, finish_reason=self.reason,
            usage={"prompt_tokens": len(self.prompt_ids), "completion_tokens": n,
                   "total_tokens": len(self.prompt_ids) + n},
            timings={"ttft_s": round(t_first - self.t0, 4), "decode_s": round(decode_s, 4),
                     "total_s": round(t1 - self.t0, 4),
                     "decode_tokens_per_s": round((n - 1) / decode_s, 2) if n > 1 and decode_s > 0 else 0.0},
            logprobs=self.lps, top_logprobs=self.tops,
            prompt_logprobs=self.prompt.prompt_logprobs if self.prompt else None,
            prompt_top_logprobs=self.prompt.prompt_top_logprobs if self.prompt else None,
        )


_NOTHING = StepResult(tokens={})


class LLM:
    """A model plus an engine plus the scheduler that batches every request over it.

    `LLM()` loads the default model (made by `realm-web pull`); `LLM(model_dir)` any export.
    `max_slots` requests run at once (each owns a KV row of `max_length` tokens; more wait in
    the queue); `max_tokens_per_step` bounds one step's batch (rows x width on the native
    engine), which is also the prefill chunk size; `max_loras` adapters can be in use at once
    (their requests run together in one batch; others wait for an entry). `warmup` (default: on for CUDA) runs every
    step shape once at load, so that no request pays a runtime's first-shape cost. `cuda_graph`
    (default: on for CUDA) replays decode steps as CUDA graphs. `speculative` turns on speculative
    decoding: "ngram", or a mapping / SpeculativeConfig such as {"method": "ngram",
    "num_speculative_tokens": 4}; its output is the same as without it (realm_web/speculative.py).
    `prefix_caching` keeps a finished request's cache on its slot, and a later prompt that begins
    with the same tokens (the next turn of a chat) computes only the rest (Scheduler).
    `pad_lone_rows` (CPU): None pads lone rows where this CPU computes one row otherwise than a
    batch, so that a request's tokens never depend on the traffic; False never does (faster on
    such CPUs); see realm_web/engines/ort_native.py "Lone rows".

    It implements `realm_web.service.ModelService`, the interface the server is built on.
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, *, engine: Engine | None = None,
                 dtype: str | None = None, device: str = "cpu", threads: int | None = None,
                 max_slots: int = 16, max_length: int | None = None, max_tokens_per_step: int | None = None,
                 kv_capacity: int | None = None, warmup: bool | None = None,
                 cuda_graph: bool | None = None, max_loras: int = 8,
                 speculative: SpeculativeConfig | Mapping[str, Any] | str | None = None,
                 prefix_caching: bool = False, pad_lone_rows: bool | None = None) -> None:
        spec = SpeculativeConfig.of(speculative)
        if engine is None:
            model_dir = Path(model) if model is not None else _default_model()
            from .engines.ort_native import OrtNativeEngine

            draft_model: str | Path | None = None
            draft_dtype: str | None = None
            if spec is not None and spec.method == "draft":  # default: one of this model's own exports drafts
                draft_model = spec.draft_model or model_dir
                draft_dtype = spec.draft_dtype
            engine = OrtNativeEngine(model_dir, dtype=dtype, device=device, threads=threads,
                                     max_slots=max_slots, max_length=max_length, cuda_graph=cuda_graph,
                                     max_loras=max_loras, draft_model=draft_model, draft_dtype=draft_dtype,
                                     pad_lone_rows=pad_lone_rows)
        self.engine = engine
        self.manifest = engine.manifest
        d = self.manifest.directory
        self.tokenizer: Tokenizer = load_tokenizer(d)
        self.chat_template: ChatTemplate | None = load_chat_template(d) if self.manifest.chat_template else None
        self.scheduler = Scheduler(self.tokenizer, eos_token_ids=self.manifest.eos_token_ids,
                                   max_slots=engine.max_slots, max_length=engine.max_length,
                                   max_tokens_per_step=max_tokens_per_step or (4096 if engine.device == "cuda" else 512),
                                   kv_capacity=kv_capacity or engine.kv_capacity, caps=engine.caps,
                                   max_loras=getattr(engine, "max_loras", 8), speculative=spec,
                                   vocab_size=self.manifest.vocab_size, prefix_caching=prefix_caching)
        self.speculative = spec
        calibrate = getattr(engine, "calibrate", None)
        if spec is not None and callable(calibrate):
            self.scheduler.calibrate(**calibrate())
        if warmup if warmup is not None else engine.device == "cuda":  # see OrtNativeEngine.warmup
            warm = getattr(engine, "warmup", None)
            if callable(warm):
                warm(self.scheduler.budget, 1 + spec.num_speculative_tokens if spec else 0)
        self._sinks: dict[int, Sink] = {}
        self._loop_task: asyncio.Task[None] | None = None

    # -- prompts -------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt, *, system: str | None = None, raw: bool = False,
                      tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Token ids for a prompt: chat messages (or a user string) through the chat template,
        the text as is when `raw` is set or the model has no template, or token ids unchanged.
        `tools` (OpenAI function objects) are offered through the template's own tool format
        when it has one, else in the system message (realm_web/structured/tools.py), where
        earlier tool calls and results are written as text too."""
        if not isinstance(prompt, str) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = [int(t) for t in prompt]  # type: ignore[arg-type]
            if not all(0 <= t < self.manifest.vocab_size for t in ids):
                raise ValueError(f"token ids must be in [0, {self.manifest.vocab_size})")
            return ids
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("the prompt is empty")
            if raw or self.chat_template is None:
                return self.tokenizer.encode(prompt)
            messages: list[Mapping[str, Any]] = [{"role": "user", "content": prompt}]
        else:
            messages = list(prompt)  # type: ignore[arg-type]  # ints were handled above
            if not messages:
                raise ValueError("the message list is empty")
            if self.chat_template is None:
                raise ValueError("this model has no chat template: pass raw text")
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        assert self.chat_template is not None
        template = self.chat_template
        if "tools" in template.source and "tool" in template.source:  # the template's own tool format
            text = template.render(messages, add_generation_prompt=True, tools=list(tools) if tools else None)
        else:
            if tools or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages):
                messages = list(plain_tool_messages(messages, tools))
            text = template.render(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text)

    def check_format(self, fmt: OutputFormat) -> None:
        """Compile a structured-output format now (StructuredError if it cannot be served)."""
        self.scheduler.check_format(fmt)

    # -- adapters -------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | os.PathLike[str]) -> None:
        """Load a LoRA adapter (a PEFT directory or a GGUF LoRA file) for requests to name with
        `adapter=name`. Raises AdapterError (naming the field) for one it cannot serve, and
        UnsupportedError when the export has no LoRA-capable graph."""
        if not self.engine.caps.adapters and self.manifest.graph.lora is not None:
            raise UnsupportedError("this engine does not serve LoRA adapters (the export has a LoRA graph: "
                                   "an onnxruntime engine serves them)")
        if not self.engine.caps.adapters:
            raise UnsupportedError("this export has no LoRA-capable graph: export it again (realm-web pull, or "
                                   "realm-web export --lora-rank 16)")
        if not isinstance(name, str) or not name:
            raise ValueError("an adapter needs a non-empty name")
        if name == self.manifest.name:
            raise AdapterError(f"an adapter cannot take the base model's name {name!r}", "name")
        contract = self.manifest.graph.lora
        adapter = read_adapter(path, self.manifest.architecture, name=name,
                               max_rank=contract.max_rank if contract else None)
        self.scheduler.load_adapter(name, adapter)

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter; AdapterError while requests (running or queued) use it."""
        self.scheduler.unload_adapter(name)

    def adapters(self) -> list[str]:
        """The names of the loaded adapters."""
        return sorted(self.scheduler.router.adapters)

    def adapter_files(self, name: str) -> dict[str, str]:
        """The files an adapter was loaded from, by download name (adapter_config.json and
        adapter_model.safetensors of a PEFT directory, or adapter.gguf); AdapterNotFound."""
        adapter = self.scheduler.router.get(name)
        src = Path(adapter.source)
        if src.is_dir():
            return {f: str(src / f) for f in ("adapter_config.json", "adapter_model.safetensors") if (src / f).is_file()}
        return {"adapter.gguf": str(src)} if src.is_file() else {}

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's text on its own (bytes that are not valid UTF-8 alone are replaced)."""
        tok = self.tokenizer
        return [tok.token_bytes(t).decode("utf-8", errors="replace") for t in ids]

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]:
        """Each token's bytes."""
        tok = self.tokenizer
        return [tok.token_bytes(t) for t in ids]

    def tokenize(self, prompt: Prompt, *, add_special_tokens: bool = False, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a text (as is: no chat template) or of chat messages (through the chat
        template); `add_special_tokens` applies the tokenizer's post-processor (BOS/EOS where it
        has them). With the defaults these are the ids the server's completions and chats use."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("the prompt is empty")
            return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        messages = list(prompt)
        if not messages or not all(isinstance(m, Mapping) for m in messages):
            raise ValueError("messages must be a non-empty list of objects")
        if self.chat_template is None:
            raise ValueError("this model has no chat template: pass raw text")
        text = self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)  # type: ignore[arg-type]
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids (special tokens written out); ValueError for an id outside the vocabulary."""
        v = self.manifest.vocab_size
        if not all(isinstance(t, int) and 0 <= t < v for t in ids):
            raise ValueError(f"token ids must be integers in [0, {v})")
        return self.tokenizer.decode(list(ids))

    def tokenizer_info(self) -> dict[str, Any]:
        """Vocabulary size, context, end-of-sequence ids, special tokens and the chat template."""
        m = self.manifest
        return {"vocab_size": m.vocab_size, "max_model_len": self.engine.max_length,
                "eos_token_ids": list(m.eos_token_ids), "special_tokens": dict(m.special_tokens),
                "chat_template": self.chat_template.source if self.chat_template else None,
                "tokenizer_file": m.tokenizer}

    def _params(self, params: SamplingParams | None, kw: dict[str, Any]) -> SamplingParams:
        if params is not None and kw:
            raise TypeError("pass either params= or keyword sampling arguments, not both")
        return params or SamplingParams(**kw)

    # -- the step: one function for both drivers -------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one step on this thread (schedule -> engine -> update) and deliver its deltas to
        the sinks of their requests. If the engine fails, the step's requests end with
        finish_reason "error" and the engine's exception is raised. The loop behind
        `stream`/`submit` runs the same step, awaiting the engine instead (and serving on)."""
        plan = self.scheduler.schedule()
        t0 = time.perf_counter()
        try:
            result = self.engine.run_sync(plan) if not plan.empty else _NOTHING
        except Exception:
            self._deliver(plan, self._fail(plan))
            raise
        self.scheduler.observe_step(plan, time.perf_counter() - t0)
        return self._deliver(plan, result)

    async def _run_loop(self) -> None:
        while self.scheduler.has_work():
            plan = self.scheduler.schedule()
            t0 = time.perf_counter()
            try:
                result = await self.engine.run(plan) if not plan.empty else _NOTHING
                self.scheduler.observe_step(plan, time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - the requests of this step fail, the loop serves on
                log.exception("engine step failed", extra={"fields": {"requests": [q.seq_id for q in plan.seqs]}})
                result = self._fail(plan)
            self._deliver(plan, result)
            # With steps on a worker thread, awaiting the next step already lets the consumers of
            # these deltas run, while the model computes; yielding here first would make every
            # step wait for all of them (measured on H100: the server's event loop, not the GPU,
            # set the pace). An engine that runs steps inline needs the yield.
            if not plan.seqs or not self.engine.step_thread:
                await asyncio.sleep(0)

    def _fail(self, plan: StepPlan) -> StepResult:
        """The engine failed under `plan`: its requests end with finish_reason "error"."""
        for q in plan.seqs:
            self.scheduler.abort(q.seq_id, reason="error")
        return _NOTHING

    def _deliver(self, plan: StepPlan, result: StepResult) -> list[RequestOutput]:
        """Apply a step's result and hand each delta to its request's sink."""
        outs = self.scheduler.update(plan, result)
        for out in outs:
            sink = self._sinks.pop(out.request_id, None) if out.finished else self._sinks.get(out.request_id)
            if sink is not None:
                sink(out)
        return outs

    # -- synchronous batch API -------------------------------------------------------------------
    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 raw: bool = False, system: str | None = None, adapter: str | Sequence[str | None] | None = None,
                 **kw: Any) -> list[Completion]:
        """Run prompts together through the scheduler (continuous batching); results come back in
        order. `params` may be one SamplingParams for all prompts or one per prompt; keyword
        arguments (temperature=, max_tokens=, seed=, stop=, ...) build one for all. `adapter`: a
        loaded adapter's name for all prompts, or one per prompt (None: the base model). If the
        engine fails, its exception is raised and none of these requests is left behind."""
        items = _prompt_list(prompts)
        if isinstance(params, Sequence):
            if kw or len(params) != len(items):
                raise TypeError("pass one SamplingParams per prompt, and no keyword sampling arguments with them")
            plist = list(params)
        else:
            plist = [self._params(params, kw)] * len(items)
        if self._loop_task is not None and not self._loop_task.done():
            raise RuntimeError("generate() cannot run while streams are being served: await llm.stream() instead")
        alist = _adapter_list(adapter, len(items))
        for a in alist:
            self._check_adapter(a)
        t0 = time.perf_counter()
        cols = [_Collector(self.encode_prompt(x, raw=raw, system=system), t0=t0) for x in items]
        rids: list[int] = []
        try:
            for c, p, a in zip(cols, plist, alist):
                rids.append(self._add(c.prompt_ids, p, c, adapter=a))
            while self.scheduler.has_work():
                self.step()
        except BaseException:
            for r in rids:  # leave nothing half-done behind
                self._sinks.pop(r, None)
                self.scheduler.abort(r)
            raise
        return [c.completion() for c in cols]

    async def agenerate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | None = None, *,
                        raw: bool = False, system: str | None = None,
                        adapter: str | Sequence[str | None] | None = None, **kw: Any) -> list[Completion]:
        """`generate` for event loops (and the only form on asynchronous engines such as the web
        one): the prompts stream concurrently over the shared loop; results come back in order."""
        p = self._params(params, kw)
        items = _prompt_list(prompts)
        alist = _adapter_list(adapter, len(items))
        ids = [self.encode_prompt(x, raw=raw, system=system) for x in items]
        return list(await asyncio.gather(*(self.collect(x, p, adapter=a) for x, a in zip(ids, alist))))

    async def collect(self, prompt_ids: list[int], params: SamplingParams,
                      on_delta: Callable[[RequestOutput], None] | None = None,
                      cancelled: Callable[[], bool] | None = None, poll_s: float = 0.05, *,
                      priority: int = 0, adapter: str | None = None) -> Completion:
        """Stream one prompt into a Completion, calling `on_delta` for each delta. When
        `cancelled()` turns true (checked after each delta, and every `poll_s` while the request
        waits for a slot or a step) the request is aborted: its last delta has finish_reason "abort"."""
        col = _Collector(prompt_ids, on_delta)
        done = asyncio.Event()

        def sink(d: RequestOutput) -> None:
            col(d)
            if d.finished:
                done.set()
            elif cancelled is not None and cancelled():
                self.abort(rid)  # its final "abort" delta follows

        rid = self.submit(prompt_ids, params, sink, priority=priority, adapter=adapter)
        try:
            while not done.is_set():
                if cancelled is None:
                    await done.wait()
                else:
                    if cancelled():
                        self.abort(rid)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(done.wait(), poll_s)
        finally:
            self._sinks.pop(rid, None)
            self.scheduler.abort(rid)  # no-op once finished
        return col.completion()

    # -- asynchronous streaming ------------------------------------------------------------------
    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is None:
            return
        if not self.engine.caps.adapters:
            raise UnsupportedError(f"adapter {adapter!r}: this engine does not serve LoRA adapters")
        if adapter not in self.scheduler.router.adapters:
            raise AdapterNotFound(f"no adapter {adapter!r} is loaded (loaded: {', '.join(self.adapters()) or 'none'})",
                               "adapter")

    def _add(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Sink, *, priority: int = 0,
             adapter: str | None = None) -> int:
        self._check_adapter(adapter)
        rid = self.scheduler.add(prompt_ids, params, priority=priority, adapter=adapter)
        self._sinks[rid] = sink
        return rid

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Sink, *,
               priority: int = 0, adapter: str | None = None) -> int:
        """Queue a request on the shared engine loop (which must run on this thread's event loop);
        `sink` gets each delta, the last one with `finished` set. Returns the request id for
        `abort`. Raises SchedulerError (or UnsupportedError) at once for a request that can
        never run."""
        rid = self._add(prompt_ids, params, sink, priority=priority, adapter=adapter)
        self._kick()
        return rid

    def abort(self, request_id: int) -> None:
        """Stop a submitted request: its sink gets a final delta with finish_reason "abort" (unless
        it had finished) and its slot is free from the next step on."""
        self.scheduler.abort(request_id)
        self._kick()

    def abort_all(self) -> int:
        """Abort every request, running or queued (each sink gets its "abort" delta at the next
        step); returns how many there were."""
        n = self.scheduler.abort_all()
        if n:
            self._kick()
        return n

    def _kick(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run_loop())

    async def stream(self, prompt: Prompt, params: SamplingParams | None = None, *, raw: bool = False,
                     system: str | None = None, priority: int = 0, adapter: str | None = None,
                     **kw: Any) -> AsyncIterator[RequestOutput]:
        """Yield deltas as tokens are made. Many coroutines may stream at once over one engine loop;
        leaving the iteration early (or cancelling) aborts the request and frees its slot."""
        p = self._params(params, kw)
        q: asyncio.Queue[RequestOutput] = asyncio.Queue()
        rid = self.submit(self.encode_prompt(prompt, raw=raw, system=system), p, q.put_nowait,
                          priority=priority, adapter=adapter)
        try:
            while True:
                out = await q.get()
                yield out
                if out.finished:
                    break
        finally:
            self._sinks.pop(rid, None)
            self.scheduler.abort(rid)  # no-op once finished

    # -- ModelService ----------------------------------------------------------------------------
    @functools.cached_property
    def info(self) -> ModelInfo:
        m, e = self.manifest, self.engine
        try:
            created = int(m.directory.stat().st_mtime)
        except OSError:
            created = 0
        return ModelInfo(id=m.name, max_length=e.max_length, vocab_size=m.vocab_size, dtype=e.variant.dtype,
                         device=e.device, created=created, architecture=dict(m.architecture))

    def stats(self) -> ServiceStats:
        s = self.scheduler
        spec = s.speculative
        return ServiceStats(running=len(s.running), waiting=len(s.waiting), kv_used=s.kv_used(),
                            kv_capacity=s.kv_capacity, speculative_method=spec.method if spec else None,
                            speculative=dict(s.spec_stats) if spec else None,
                            prefix_cache=dict(s.prefix_stats) if s.prefix_caching else None)

    def waiting(self, request_ids: Sequence[int]) -> int:
        reqs = self.scheduler.requests
        return sum(1 for r in request_ids if (q := reqs.get(r)) is not None and q.slot is None)

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()


def _adapter_list(adapter: str | Sequence[str | None] | None, n: int) -> list[str | None]:
    """One adapter (or None) for all n prompts, or one per prompt."""
    if adapter is None or isinstance(adapter, str):
        return [adapter] * n
    out = list(adapter)
    if len(out) != n or not all(a is None or isinstance(a, str) for a in out):
        raise TypeError(f"adapter= takes a name, or one name (or None) per prompt: {n} prompts, {len(out)} given")
    return out


def _prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """One prompt or a list of them -> a list (a list of ints or of messages is one prompt)."""
    many = not isinstance(prompts, str) and bool(prompts) and not isinstance(next(iter(prompts)), (Mapping, int))
    return list(prompts) if many else [prompts]  # type: ignore[arg-type, list-item]


def _default_model() -> Path:
    from .paths import default_model_dir

    d = default_model_dir()
    if not (d / "realm.json").exists():
        raise FileNotFoundError(f"no default model at {d}: run `realm-web pull` first")
    return d


__all__ = ["LLM", "Completion", "Engine", "UnsupportedError", "load_manifest"]
