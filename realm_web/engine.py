"""The Engine protocol and the LLM facade that drives schedule -> run -> update.

Only this module's LLM awaits (with asyncio, which Pyodide has too); the scheduler and the
rest of the core are plain state machines.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping, Protocol, Sequence, Union

from .chat import ChatTemplate, load_chat_template
from .manifest import Manifest, load_manifest
from .sampling import SamplingParams
from .scheduler import RequestOutput, Scheduler
from .step import StepPlan, StepResult
from .tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger("realm_web")

Prompt = Union[str, Sequence[Mapping[str, Any]], Sequence[int]]  # raw text, chat messages, or token ids


class Engine(Protocol):
    """Runs one step. The only thing in realm-web that touches a runtime."""

    manifest: Manifest
    max_slots: int
    max_length: int
    kv_capacity: int

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


class LLM:
    """A model plus an engine plus the scheduler that batches every request over it.

    `LLM()` loads the default model (made by `realm-web pull`); `LLM(model_dir)` any export.
    `max_slots` requests run at once (each owns a KV row of `max_length` tokens; more wait in
    the queue); `max_tokens_per_step` bounds one step's padded batch (rows x width), which
    is also the prefill chunk size. `warmup` (default: on for CUDA) runs every step shape
    once at load, so that no request pays a runtime's first-shape cost. `cuda_graph` (default:
    on for CUDA) replays decode steps as CUDA graphs.
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, *, engine: Engine | None = None,
                 dtype: str | None = None, device: str = "cpu", threads: int | None = None,
                 max_slots: int = 16, max_length: int | None = None, max_tokens_per_step: int | None = None,
                 kv_capacity: int | None = None, warmup: bool | None = None,
                 cuda_graph: bool | None = None) -> None:
        if engine is None:
            model_dir = Path(model) if model is not None else _default_model()
            from .engines.ort_native import OrtNativeEngine

            engine = OrtNativeEngine(model_dir, dtype=dtype, device=device, threads=threads,
                                     max_slots=max_slots, max_length=max_length, cuda_graph=cuda_graph)
        self.engine = engine
        self.manifest = engine.manifest
        d = self.manifest.directory
        self.tokenizer: Tokenizer = load_tokenizer(d)
        self.chat_template: ChatTemplate | None = load_chat_template(d) if self.manifest.chat_template else None
        self.scheduler = Scheduler(self.tokenizer, eos_token_ids=self.manifest.eos_token_ids,
                                   max_slots=engine.max_slots, max_length=engine.max_length,
                                   max_tokens_per_step=max_tokens_per_step or (4096 if device == "cuda" else 512),
                                   kv_capacity=kv_capacity or engine.kv_capacity)
        if warmup if warmup is not None else device == "cuda":  # see OrtNativeEngine.warmup
            warm = getattr(engine, "warmup", None)
            if callable(warm):
                warm(self.scheduler.budget)
        self._sinks: dict[int, Callable[[RequestOutput], None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    # -- prompts -------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt, *, system: str | None = None, raw: bool = False) -> list[int]:
        """Token ids for a prompt: chat messages (or a user string) through the chat template,
        the text as is when `raw` is set or the model has no template, or token ids unchanged."""
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
        text = self.chat_template.render(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text)

    def _params(self, params: SamplingParams | None, kw: dict[str, Any]) -> SamplingParams:
        if params is not None and kw:
            raise TypeError("pass either params= or keyword sampling arguments, not both")
        return params or SamplingParams(**kw)

    # -- synchronous batch API -------------------------------------------------------------------
    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 raw: bool = False, system: str | None = None, **kw: Any) -> list[Completion]:
        """Run prompts together through the scheduler (continuous batching); results come back in
        order. `params` may be one SamplingParams for all prompts or one per prompt; keyword
        arguments (temperature=, max_tokens=, seed=, stop=, ...) build one for all."""
        many = not isinstance(prompts, str) and bool(prompts) and not isinstance(next(iter(prompts)), (Mapping, int))
        items: list[Prompt] = list(prompts) if many else [prompts]  # type: ignore[arg-type, list-item]
        if isinstance(params, Sequence):
            if kw or len(params) != len(items):
                raise TypeError("pass one SamplingParams per prompt, and no keyword sampling arguments with them")
            plist = list(params)
        else:
            plist = [self._params(params, kw)] * len(items)
        if self._loop_task is not None and not self._loop_task.done():
            raise RuntimeError("generate() cannot run while streams are being served: await llm.stream() instead")
        t0 = time.perf_counter()
        ids = [self.encode_prompt(x, raw=raw, system=system) for x in items]
        rids: list[int] = []
        try:
            for x, p in zip(ids, plist):
                rids.append(self.scheduler.add(x, p))
        except Exception:
            for r in rids:  # leave nothing half-queued behind
                self.scheduler.abort(r)
                self.scheduler.requests.pop(r, None)
            raise
        first: dict[int, float] = {}
        while self.scheduler.has_work():
            plan = self.scheduler.schedule()
            result = self.engine.run_sync(plan) if plan.seqs else StepResult(tokens={})
            for out in self.scheduler.update(plan, result):
                if out.token_ids:
                    first.setdefault(out.request_id, time.perf_counter())
        t1 = time.perf_counter()
        return [self._completion(r, x, t0, first.get(r, t1), t1) for r, x in zip(rids, ids)]

    def _completion(self, rid: int, prompt_ids: list[int], t0: float, t_first: float, t1: float) -> Completion:
        req = self.scheduler.requests.pop(rid)
        return _make_completion(req.text, req.output_ids, prompt_ids, req.finish_reason, t0, t_first, t1)

    async def agenerate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | None = None, *,
                        raw: bool = False, system: str | None = None, **kw: Any) -> list[Completion]:
        """`generate` for event loops (and the only form on asynchronous engines such as the web
        one): the prompts stream concurrently over the shared loop; results come back in order."""
        many = not isinstance(prompts, str) and bool(prompts) and not isinstance(next(iter(prompts)), (Mapping, int))
        items: list[Prompt] = list(prompts) if many else [prompts]  # type: ignore[arg-type, list-item]
        p = self._params(params, kw)
        ids = [self.encode_prompt(x, raw=raw, system=system) for x in items]

        return list(await asyncio.gather(*(self.collect(x, p) for x in ids)))

    async def collect(self, prompt_ids: list[int], params: SamplingParams,
                      on_delta: Callable[[RequestOutput], None] | None = None,
                      cancelled: Callable[[], bool] | None = None, poll_s: float = 0.05) -> Completion:
        """Stream one prompt into a Completion, calling `on_delta` for each delta. When
        `cancelled()` turns true (checked after each delta, and every `poll_s` while the request
        waits for a slot or a step) the request is aborted: its last delta has finish_reason "abort"."""
        t0 = time.perf_counter()
        first, out_ids, text, reason = None, [], "", None
        q: asyncio.Queue[RequestOutput] = asyncio.Queue()
        rid = self.submit(prompt_ids, params, q.put_nowait)

        async def watch() -> None:
            assert cancelled is not None
            while not cancelled():
                await asyncio.sleep(poll_s)
            self.abort(rid)

        watcher = asyncio.get_running_loop().create_task(watch()) if cancelled is not None else None
        try:
            while True:
                d = await q.get()
                if d.token_ids and first is None:
                    first = time.perf_counter()
                out_ids += d.token_ids
                text += d.text
                reason = d.finish_reason
                if on_delta is not None:
                    on_delta(d)
                if d.finished:
                    break
                if cancelled is not None and cancelled():
                    self.abort(rid)  # its final "abort" delta follows
        finally:
            if watcher is not None:
                watcher.cancel()
            self._sinks.pop(rid, None)
            self.scheduler.abort(rid)  # no-op once finished
            self.scheduler.requests.pop(rid, None)
        t1 = time.perf_counter()
        return _make_completion(text, out_ids, prompt_ids, reason, t0, first or t1, t1)

    # -- asynchronous streaming ------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Callable[[RequestOutput], None], *,
               priority: int = 0, adapter: str | None = None) -> int:
        """Queue a request on the shared engine loop (which must run on this thread's event loop);
        `sink` gets each delta, the last one with `finished` set. Returns the request id for
        `abort`. Raises SchedulerError at once for a request that can never run."""
        rid = self.scheduler.add(prompt_ids, params, priority=priority, adapter=adapter)
        self._sinks[rid] = sink
        self._kick()
        return rid

    def abort(self, request_id: int) -> None:
        """Stop a submitted request: its sink gets a final delta with finish_reason "abort" (unless
        it had finished) and its slot is free from the next step on."""
        self.scheduler.abort(request_id)
        self._kick()

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
            self.scheduler.requests.pop(rid, None)

    async def _run_loop(self) -> None:
        while self.scheduler.has_work():
            plan = self.scheduler.schedule()
            try:
                result = await self.engine.run(plan) if plan.seqs else StepResult(tokens={})
            except Exception:  # noqa: BLE001 - the requests of this step fail, the loop serves on
                log.exception("engine step failed", extra={"fields": {"requests": [q.seq_id for q in plan.seqs]}})
                for q in plan.seqs:
                    self.scheduler.abort(q.seq_id, reason="error")
                result = StepResult(tokens={})
            for out in self.scheduler.update(plan, result):
                sink = self._sinks.get(out.request_id)
                if out.finished:
                    self._sinks.pop(out.request_id, None)
                    self.scheduler.requests.pop(out.request_id, None)
                if sink is not None:
                    sink(out)
            # With steps on a worker thread, awaiting the next step already lets the consumers of
            # these deltas run, while the model computes; yielding here first would make every
            # step wait for all of them (measured on H100: the server's event loop, not the GPU,
            # set the pace). An engine that runs steps inline needs the yield.
            if not plan.seqs or not getattr(self.engine, "step_thread", False):
                await asyncio.sleep(0)

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()


def _make_completion(text: str, ids: list[int], prompt_ids: list[int], reason: str | None,
                     t0: float, t_first: float, t1: float) -> Completion:
    n = len(ids)
    decode_s = t1 - t_first
    return Completion(
        text=text, token_ids=ids, prompt_token_ids=prompt_ids, finish_reason=reason,
        usage={"prompt_tokens": len(prompt_ids), "completion_tokens": n, "total_tokens": len(prompt_ids) + n},
        timings={"ttft_s": round(t_first - t0, 4), "decode_s": round(decode_s, 4), "total_s": round(t1 - t0, 4),
                 "decode_tokens_per_s": round((n - 1) / decode_s, 2) if n > 1 and decode_s > 0 else 0.0},
    )


def _default_model() -> Path:
    from .paths import default_model_dir

    d = default_model_dir()
    if not (d / "realm.json").exists():
        raise FileNotFoundError(f"no default model at {d}: run `realm-web pull` first")
    return d


__all__ = ["LLM", "Completion", "Engine", "load_manifest"]
