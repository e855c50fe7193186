"""Continuous-batching scheduler (sans-IO).

Theory of operation
-------------------
Requests enter a FIFO queue (`add`). Each step, `schedule()` builds a StepPlan:
  1. every running request that is decoding feeds its last sampled token (1 token each);
  2. running requests still in prefill feed the next chunk of their prompt, within what is
     left of the per-step token budget (`max_tokens_per_step`), so a long prompt delays the
     streams that are already decoding by at most one chunk per step;
  3. waiting requests are admitted while a KV slot is free, and start their prefill.
The engine runs the plan (the only I/O) and returns one sampled token per request whose
prefill is complete. `update(plan, result)` appends those tokens, applies stop rules
(EOS, stop token ids, stop strings, max_tokens, context length), turns tokens into text
deltas, frees the slots of finished requests and returns one RequestOutput per request
that produced something. `abort(id)` finishes a request; its slot is free for the next step.

Nothing here awaits or touches a tensor: tests drive it with hand-made StepResults.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from .sampling import SamplingParams, draw, random_seed
from .step import SeqStep, StepPlan, StepResult
from .stream import IncrementalDetokenizer, StopStrings


class SchedulerError(ValueError):
    """A request the scheduler cannot take (too long, bad parameters)."""


class _Tok(Protocol):
    special_ids: frozenset[int]

    def token_bytes(self, token_id: int) -> bytes: ...


@dataclass
class RequestOutput:
    """What one request produced in one step (a streaming delta)."""

    request_id: int
    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    logprobs: list[float] | None = None


@dataclass
class Request:
    request_id: int
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    adapter: str | None = None
    priority: int = 0
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens already in the KV cache
    slot: int | None = None
    finish_reason: str | None = None
    detok: IncrementalDetokenizer | None = None
    stops: StopStrings | None = None
    text: str = ""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.prompt_ids)


class Scheduler:
    """Plans steps for many requests over `max_slots` KV slots of `max_length` tokens each."""

    def __init__(self, tokenizer: _Tok, *, eos_token_ids: Sequence[int], max_slots: int = 1,
                 max_length: int = 2048, max_tokens_per_step: int = 512) -> None:
        if max_slots < 1 or max_tokens_per_step < 1:
            raise ValueError("max_slots and max_tokens_per_step must be >= 1")
        self.tokenizer = tokenizer
        self.eos = frozenset(eos_token_ids)
        self.max_slots = max_slots
        self.max_length = max_length
        self.budget = max_tokens_per_step
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.free_slots: list[int] = list(range(max_slots))
        self.requests: dict[int, Request] = {}
        self._ids = itertools.count()
        self._aborted: list[RequestOutput] = []
        self._freed: list[int] = []

    # -- requests ------------------------------------------------------------------------------
    def add(self, prompt_ids: Sequence[int], params: SamplingParams, *, adapter: str | None = None,
            priority: int = 0) -> int:
        """Queue a request; returns its id. Raises SchedulerError if it can never fit."""
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise SchedulerError("the prompt is empty")
        if len(ids) >= self.max_length:
            raise SchedulerError(f"the prompt has {len(ids)} tokens; the context holds {self.max_length}")
        rid = next(self._ids)
        seed = params.seed if params.seed is not None else random_seed()
        req = Request(rid, ids, params, seed, adapter, priority,
                      detok=IncrementalDetokenizer(self.tokenizer), stops=StopStrings(params.stop))
        self.requests[rid] = req
        if params.max_tokens == 0:
            req.finish_reason = "length"
            self._aborted.append(RequestOutput(rid, [], "", True, "length"))
            return rid
        self.waiting.append(req)
        return rid

    def abort(self, request_id: int) -> None:
        """Finish a request now; its slot is reused from the next step on. Unknown ids are ignored."""
        req = self.requests.get(request_id)
        if req is None or req.finished:
            return
        req.finish_reason = "abort"
        if req in self.waiting:
            self.waiting.remove(req)
        self._release(req)
        self._aborted.append(RequestOutput(request_id, [], "", True, "abort"))

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._aborted)

    # -- step contract -------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        budget = self.budget
        seqs: list[SeqStep] = []
        while self.waiting and self.free_slots:
            req = self.waiting.popleft()
            req.slot = self.free_slots.pop(0)
            self.running.append(req)
        for req in self.running:  # decodes first: they cost one token each
            if not req.in_prefill and budget > 0:
                seqs.append(self._seq(req, [req.output_ids[-1]], True))
                budget -= 1
        for req in self.running:
            if req.in_prefill and budget > 0:
                chunk = req.prompt_ids[req.num_computed: req.num_computed + budget]
                last = req.num_computed + len(chunk) == len(req.prompt_ids)
                seqs.append(self._seq(req, chunk, last))
                budget -= len(chunk)
        freed, self._freed = self._freed, []
        return StepPlan(seqs=seqs, freed_slots=freed)

    def _seq(self, req: Request, tokens: list[int], sample: bool) -> SeqStep:
        p = req.params
        assert req.slot is not None
        return SeqStep(
            seq_id=req.request_id, slot=req.slot, tokens=tokens, start=req.num_computed, sample=sample,
            sampling=p.engine_view(), draw=draw(req.seed, len(req.output_ids)) if not p.greedy else 0.0,
            history=req.all_ids if p.repetition_penalty != 1.0 else None,
            logprobs=p.logprobs, adapter=req.adapter,
        )

    def update(self, plan: StepPlan, result: StepResult) -> list[RequestOutput]:
        outputs, self._aborted = self._aborted, []
        for seq in plan.seqs:
            req = self.requests.get(seq.seq_id)
            if req is None or req.finished:
                continue  # aborted while the step ran: drop its token
            req.num_computed += len(seq.tokens)
            new = result.tokens.get(seq.seq_id, [])
            if not seq.sample or not new:
                continue
            out = self._append(req, new, result.logprobs.get(seq.seq_id))
            if out is not None:
                outputs.append(out)
        return outputs

    def _append(self, req: Request, tokens: list[int], logprobs: list[float] | None) -> RequestOutput | None:
        p = req.params
        emitted: list[int] = []
        text = ""
        assert req.detok is not None and req.stops is not None
        hit = False
        for tok in tokens:
            req.output_ids.append(tok)
            emitted.append(tok)
            if (tok in self.eos and not p.ignore_eos) or tok in p.stop_token_ids:
                req.finish_reason = "stop"
                break
            safe, hit = req.stops.feed(req.detok.add([tok]))
            text += safe
            if hit:
                req.finish_reason = "stop"
                break
            if len(req.output_ids) >= p.max_tokens or len(req.all_ids) >= self.max_length:
                req.finish_reason = "length"
                break
        if req.finished:
            if not hit:  # emit what was held back: a partial character, a possible stop-string start
                tail, hit = req.stops.feed(req.detok.flush())
                text += tail + ("" if hit else req.stops.flush())
            self._release(req)
        req.text += text
        return RequestOutput(req.request_id, emitted, text, req.finished, req.finish_reason, logprobs)

    def _release(self, req: Request) -> None:
        if req in self.running:
            self.running.remove(req)
        if req.slot is not None:
            self.free_slots.append(req.slot)
            self._freed.append(req.slot)
            req.slot = None
