"""Continuous-batching scheduler (sans-IO).

Theory of operation
-------------------
A request owns one KV *slot* (a row of the engine's cache) from admission until it finishes.
Its tokens are `prompt_ids + output_ids`; `num_computed` of them are in the cache, the rest are
*pending*. Every step feeds each scheduled request the next piece of its pending tokens and, when
that piece reaches the end, samples one new token:

  * a decode step feeds one token to every request past its prompt (its last sample, or an
    output token being replayed after a preemption);
  * a prefill step feeds prompts: several fresh prompts whole, or one prompt's next chunk.

Engines run a step as one padded batch over a contiguous span of slots (rows x width), so the
two kinds alternate instead of mixing: a 1-token decode padded to a 200-token chunk would cost
200x. While prompts are pending, decode and prefill steps take turns, so a stream that is
already decoding waits at most one chunk between two of its tokens. The chunk width is set by
the per-step token budget, counted as the engine pays for it: rows of the span x width.
Rows of the span that the step does not schedule are idle: the engine writes their padding past
their valid length, where it is never read (decode steps are one token wide, and a shared
prefill step spans only empty slots).

Every token's numbers come out the same whatever else is in the batch: a position is always
computed by the same kind of step (a prompt in chunks whose boundaries depend only on the
budget, each output token by a one-token step), and the engine's kernels are row-independent.
So greedy tokens and seeded samples do not depend on the traffic (tests check it).

Admission takes waiting requests in order of priority (higher first), then arrival, into the
lowest free slot (so the busy rows stay packed at the low end), while the KV capacity holds.
The capacity counts every running request's full length (prompt + output so far). When
decoding would exceed it, or a waiting request outranks a running one that holds what it
needs, the lowest-priority, latest-arrived running request is *preempted*: its slot is freed
and it returns to the queue with its output kept. When readmitted it recomputes its cache (as
vLLM does): the prompt by prefill, then its output tokens replayed one per decode step, the
way they were first computed, so it continues bit-exactly where it stopped.

`update(plan, result)` appends sampled tokens, applies stop rules (EOS, stop token ids, stop
strings, max_tokens, context length), turns tokens into text deltas and frees the slots of
finished requests. `abort(id)` finishes a request at once; its slot is reusable at the next
step, whose plan lists it in `freed_slots`.

Nothing here awaits or touches a tensor: tests drive it with hand-made StepResults.
"""
from __future__ import annotations

import bisect
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

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
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" (the engine failed)
    logprobs: list[float] | None = None


@dataclass
class Request:
    request_id: int
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    adapter: str | None = None
    priority: int = 0
    arrival: int = 0
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens already in the KV cache
    slot: int | None = None
    finish_reason: str | None = None
    detok: IncrementalDetokenizer | None = None
    stops: StopStrings | None = None
    text: str = ""
    preemptions: int = 0
    view: dict[str, Any] = field(default_factory=dict)  # params.engine_view(), made once

    def __post_init__(self) -> None:
        self.view = self.params.engine_view()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def token_at(self, i: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[i] if i < n else self.output_ids[i - n]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def pending(self) -> int:
        """Tokens not yet in the cache; the last of them is fed to sample the next token."""
        return self.length - self.num_computed

    @property
    def prompt_left(self) -> int:
        return max(0, len(self.prompt_ids) - self.num_computed)

    @property
    def in_prefill(self) -> bool:
        return self.prompt_left > 0

    @property
    def rank(self) -> tuple[int, int]:
        """Sort key: first in line = highest priority, then earliest arrival."""
        return (-self.priority, self.arrival)


class Scheduler:
    """Plans steps for many requests over `max_slots` KV slots of `max_length` tokens each.

    `max_tokens_per_step` bounds a step's padded cost (rows x width); `kv_capacity` bounds the
    tokens held by all running requests together (default: every slot full).
    """

    def __init__(self, tokenizer: _Tok, *, eos_token_ids: Sequence[int], max_slots: int = 1,
                 max_length: int = 2048, max_tokens_per_step: int = 512, kv_capacity: int | None = None) -> None:
        if max_slots < 1 or max_tokens_per_step < 1 or max_length < 2:
            raise ValueError("max_slots and max_tokens_per_step must be >= 1, max_length >= 2")
        self.tokenizer = tokenizer
        self.eos = frozenset(eos_token_ids)
        self.max_slots = max_slots
        self.max_length = max_length
        self.budget = max_tokens_per_step
        self.kv_capacity = max_slots * max_length if kv_capacity is None else kv_capacity
        if self.kv_capacity < max_length:
            raise ValueError(f"kv_capacity ({self.kv_capacity}) must hold at least one full context ({max_length})")
        self.waiting: list[Request] = []  # sorted by rank
        self.running: list[Request] = []
        self.free_slots: list[int] = list(range(max_slots))  # a heap: the lowest slot is reused first
        self.requests: dict[int, Request] = {}
        self._ids = itertools.count()
        self._arrivals = itertools.count()
        self._aborted: list[RequestOutput] = []
        self._freed: list[int] = []
        self._last_kind = "prefill"
        self.num_preemptions = 0

    # -- requests ------------------------------------------------------------------------------
    def add(self, prompt_ids: Sequence[int], params: SamplingParams, *, adapter: str | None = None,
            priority: int = 0) -> int:
        """Queue a request; returns its id. Higher `priority` runs first (and may preempt).
        Raises SchedulerError if it can never fit."""
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise SchedulerError("the prompt is empty")
        if len(ids) >= self.max_length:
            raise SchedulerError(f"the prompt has {len(ids)} tokens; the context holds {self.max_length}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise SchedulerError(f"priority must be an integer, got {priority!r}")
        rid = next(self._ids)
        seed = params.seed if params.seed is not None else random_seed()
        req = Request(rid, ids, params, seed, adapter, priority, next(self._arrivals),
                      detok=IncrementalDetokenizer(self.tokenizer), stops=StopStrings(params.stop))
        self.requests[rid] = req
        if params.max_tokens == 0:
            req.finish_reason = "length"
            self._aborted.append(RequestOutput(rid, [], "", True, "length"))
            return rid
        self._enqueue(req)
        return rid

    def abort(self, request_id: int, reason: str = "abort") -> None:
        """Finish a request now (finish_reason `reason`: "abort", or "error" when the engine
        failed under it); its slot is reused from the next step on. Unknown ids are ignored."""
        req = self.requests.get(request_id)
        if req is None or req.finished:
            return
        req.finish_reason = reason
        if req in self.waiting:
            self.waiting.remove(req)
        self._release(req)
        self._aborted.append(RequestOutput(request_id, [], "", True, reason))

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._aborted)

    def kv_used(self) -> int:
        """Tokens the running requests hold once their pending tokens are in (the capacity measure)."""
        return sum(r.length for r in self.running)

    # -- step contract -------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        """Choose this step's requests and tokens (see the module docstring)."""
        self._admit()
        decoders = [r for r in self.running if not r.in_prefill]
        while self.kv_used() > self.kv_capacity and len(self.running) > 1:  # decoding grew past capacity
            self._preempt(max(self.running, key=lambda r: r.rank))
            decoders = [r for r in self.running if not r.in_prefill]
        prefillers = [r for r in self.running if r.in_prefill]
        if prefillers and (not decoders or self._last_kind == "decode"):
            seqs = self._prefill_step(prefillers)
            self._last_kind = "prefill"
        else:  # one token each: the last sample, or (after a preemption) an output token replayed
            decoders.sort(key=lambda r: r.rank)
            seqs = [self._seq(r, [r.token_at(r.num_computed)], r.pending == 1) for r in decoders[: self.budget]]
            self._last_kind = "decode"
        freed, self._freed = self._freed, []
        return StepPlan(seqs=seqs, freed_slots=freed)

    def _admit(self) -> None:
        while self.waiting:
            req = self.waiting[0]
            if not (self.free_slots and self.kv_used() + req.length <= self.kv_capacity):
                victims = [r for r in self.running if r.priority < req.priority]
                if not victims:
                    return
                self._preempt(max(victims, key=lambda r: r.rank))
                continue
            self.waiting.pop(0)
            req.slot = heapq.heappop(self.free_slots)
            self.running.append(req)

    def _prefill_step(self, prefillers: list[Request]) -> list[SeqStep]:
        """Prompt chunks for a contiguous span of slots, grown from the first request in line
        while the span feeds more tokens within the budget.

        Chunk boundaries never depend on the company a request keeps, so its numerics (and
        greedy tokens) are the same alone or batched: a prompt that shares a step goes in whole,
        and one that does not fit runs alone in chunks of exactly the budget. Several rows
        share a step only when every row of the span starts from an empty cache, which is also
        what onnxruntime's GroupQueryAttention needs (a multi-token step on top of earlier
        context takes one row at a time)."""
        by_slot = {r.slot: r for r in self.running}
        cand = sorted(prefillers, key=lambda r: r.slot or 0)
        first = cand.index(min(prefillers, key=lambda r: r.rank))
        lo = hi = first  # chosen: cand[lo..hi]

        def fill(a: int, b: int) -> int:
            """Prompt tokens that cand[a..b] feed as one padded span, 0 if they cannot."""
            s0, s1 = cand[a].slot or 0, cand[b].slot or 0
            width = max(r.prompt_left for r in cand[a:b + 1])
            if (s1 - s0 + 1) * width > self.budget:
                return 0
            if any(r.num_computed for s in range(s0, s1 + 1) if (r := by_slot.get(s)) is not None):
                return 0
            return sum(r.prompt_left for r in cand[a:b + 1])

        real = fill(lo, hi)
        while real:
            options = [(fill(a, b), a, b) for a, b in ((lo - 1, hi), (lo, hi + 1)) if 0 <= a and b < len(cand)]
            best = max(options, default=(0, lo, hi))
            if best[0] <= real:
                break
            real, lo, hi = best
        if not real:  # the first in line runs alone, in chunks of the budget
            r = cand[first]
            return [self._chunk(r, min(r.prompt_left, self.budget))]
        return [self._chunk(r, r.prompt_left) for r in cand[lo:hi + 1]]

    def _chunk(self, req: Request, n: int) -> SeqStep:
        end = req.num_computed + n
        return self._seq(req, req.prompt_ids[req.num_computed:end], end == req.length)

    def _seq(self, req: Request, tokens: list[int], sample: bool) -> SeqStep:
        p = req.params
        assert req.slot is not None
        return SeqStep(
            seq_id=req.request_id, slot=req.slot, tokens=tokens, start=req.num_computed, sample=sample,
            sampling=req.view, draw=draw(req.seed, len(req.output_ids)) if not p.greedy else 0.0,
            history=req.all_ids if p.repetition_penalty != 1.0 else None,
            logprobs=p.logprobs, adapter=req.adapter,
        )

    def update(self, plan: StepPlan, result: StepResult) -> list[RequestOutput]:
        """Apply an engine result to the plan it ran; returns the deltas of this step."""
        outputs, self._aborted = self._aborted, []
        for seq in plan.seqs:
            req = self.requests.get(seq.seq_id)
            if req is None or req.finished or req.slot != seq.slot:
                continue  # aborted (or preempted) while the step ran: drop its token
            req.num_computed = seq.start + len(seq.tokens)
            new = result.tokens.get(seq.seq_id, [])
            if not seq.sample:
                continue
            if not new:
                raise RuntimeError(f"the engine returned no token for sequence {seq.seq_id}, which asked for one")
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
            if len(req.output_ids) >= p.max_tokens or req.length >= self.max_length:
                req.finish_reason = "length"
                break
        if req.finished:
            if not hit:  # emit what was held back: a partial character, a possible stop-string start
                tail, hit = req.stops.feed(req.detok.flush())
                text += tail + ("" if hit else req.stops.flush())
            self._release(req)
        req.text += text
        return RequestOutput(req.request_id, emitted, text, req.finished, req.finish_reason, logprobs)

    def _enqueue(self, req: Request) -> None:
        bisect.insort(self.waiting, req, key=lambda r: r.rank)

    def _preempt(self, req: Request) -> None:
        """Give up `req`'s slot and cache; it waits again and will recompute what it had."""
        self._release(req)
        req.num_computed = 0
        req.preemptions += 1
        self.num_preemptions += 1
        self._enqueue(req)

    def _release(self, req: Request) -> None:
        if req in self.running:
            self.running.remove(req)
        if req.slot is not None:
            heapq.heappush(self.free_slots, req.slot)
            self._freed.append(req.slot)
            req.slot = None
