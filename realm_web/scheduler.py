"""Continuous-batching scheduler (sans-IO).

Theory of operation
-------------------
A request owns one KV *slot* (a row of the engine's cache) from admission until it finishes.
Its tokens are `prompt_ids + output_ids`; `num_computed` of them are in the cache, the rest are
*pending*. The scheduler is the only owner of that count: every step's plan states, per row,
where its tokens start (and, for rows that hold a cache but sit this step out, their valid
length), and engines keep no count of their own (see step.py). Every step feeds each scheduled
request the next piece of its pending tokens and, when that piece reaches the end, samples one
new token:

  * a decode step feeds one token to every request past its prompt (its last sample, or an
    output token being replayed after a preemption);
  * a prefill step feeds prompts: several fresh prompts whole, or one prompt's next chunk.

How prompts may share a step comes from the engine's capabilities (`EngineCaps`). An engine
with `padded_span` (the native one) runs a step as one padded batch over a contiguous span of
slots (rows x width), so the two kinds alternate instead of mixing: a 1-token decode padded to
a 200-token chunk would cost 200x. An engine without it (the browser's and Node's bridge) runs
the rows of a step one after another, and a step costs the tokens it feeds. Either way, while
prompts are pending, decode and prefill steps take turns, so a stream that is already decoding
waits at most one chunk between two of its tokens. The chunk width is the per-step token budget
(or the engine's `prefill_width`, if smaller). Rows of a padded span that the step does not
schedule are idle: the engine writes their padding past their valid length, where it is never
read.

Every token's numbers come out the same whatever else is in the batch: a position is always
computed by the same kind of step (a prompt in chunks whose boundaries depend only on the
chunk width, each output token by a one-token step), and the engine's kernels are
row-independent. So greedy tokens and seeded samples do not depend on the traffic (tests check
it).

Admission takes waiting requests in order of priority (higher first), then arrival, into the
lowest free slot (so the busy rows stay packed at the low end), while the KV capacity holds.
The capacity counts every running request's full length (prompt + output so far). When
decoding would exceed it, or a waiting request outranks a running one that holds what it
needs, the lowest-priority, latest-arrived running request is *preempted*: its slot is freed
and it returns to the queue with its output kept. When readmitted it recomputes its cache (as
vLLM does): the prompt by prefill, then its output tokens replayed one per decode step, the
way they were first computed, so it continues bit-exactly where it stopped.

A request's constants (its sampling spec, its adapter) reach the engine once, in the plan of
the first step it runs on a slot (`new_seqs`); the plan after it gives the slot up (finished,
aborted, preempted) lists it in `released`.

Prefix caching (`prefix_caching`, off by default): a finished request's slot keeps its cache
("parked": the request is not released to the engine yet). Admission gives a request the free
slot whose parked cache begins its prompt longest (the same adapter, and at least MIN_PREFIX
tokens; one prompt token is always left to compute), sets its `num_computed` past those tokens,
and announces it with `NewSeq.cached` in the same plan that releases the parked request, so the
engine keeps the cache. Otherwise it takes the lowest free slot with no parked cache, and only
then gives one up. Only the finished request's prompt positions are kept for reuse (they were
computed by prompt steps, as a fresh prompt's are; its answer's were computed one token at a
time, and reusing those moved near ties in int4), so the next turn of a chat computes its last
answer and its new message, not the conversation, and gives the tokens a fresh run gives (tested
in fp32 and int4).

`update(plan, result)` appends sampled tokens, applies stop rules (EOS, stop token ids, stop
strings, max_tokens, context length), turns tokens into text deltas and frees the slots of
finished requests; a finished request leaves `requests` with its last delta. Results for
requests aborted or preempted while the step ran are ignored. `abort(id)` finishes a request at
once; its slot is reusable at the next step.

Nothing here awaits or touches a tensor: tests drive it with hand-made StepResults.
"""
from __future__ import annotations

import bisect
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from .lora import AdapterInUse, LoraRouter
from .sampling import SamplingParams, draw, random_seed
from .speculative import DRAFT_PRIOR, Acceptance, Drafter, NgramIndex, SpeculativeConfig, StepCost, accepted_prefix, choose_drafts
from .step import AdapterLoad, EngineCaps, NewSeq, SamplingSpec, SeqStep, StepPlan, StepResult, TokenMask
from .structured import CLOSE_WINDOW, Constrainer, Matcher, OutputFormat, StructuredError, Vocabulary
from .stream import IncrementalDetokenizer, StopStrings


# A request that waits this many steps for an adapter entry gets one closed for it (lora.LoraRouter):
# until then requests of resident adapters behind it go first.
STARVE_STEPS = 16


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
    logprobs: list[float] | None = None  # per token (params.logprobs)
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per token: the N most likely (params.top_logprobs)
    # with params.prompt_logprobs, in the request's first delta: per prompt token (the first: None)
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None

    def merged(self, later: "RequestOutput") -> "RequestOutput":
        """This delta followed by the request's next one, as one delta."""
        def cat(a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
            return None if a is None and b is None else (a or []) + (b or [])

        return RequestOutput(self.request_id, self.token_ids + later.token_ids, self.text + later.text,
                             later.finished, later.finish_reason, cat(self.logprobs, later.logprobs),
                             cat(self.top_logprobs, later.top_logprobs),
                             self.prompt_logprobs if self.prompt_logprobs is not None else later.prompt_logprobs,
                             self.prompt_top_logprobs if self.prompt_top_logprobs is not None
                             else later.prompt_top_logprobs)


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
    num_computed: int = 0  # tokens in the KV cache: the one count of it (engines keep none)
    slot: int | None = None
    finish_reason: str | None = None
    detok: IncrementalDetokenizer | None = None
    stops: StopStrings | None = None
    text: str = ""
    preemptions: int = 0
    spec: SamplingSpec = field(default_factory=SamplingSpec)  # params.spec(), made once
    announced: bool = False  # the engine has had this request's NewSeq for its current slot
    adapter_entry: int = 0  # the adapter table entry it holds while running (0: no adapter)
    blocked_since: int | None = None  # the step it began waiting for an adapter entry
    drafter: Drafter | None = None  # speculative drafter over prompt + output (n-gram lookup)
    accept: Acceptance = field(default_factory=Acceptance)  # its draft acceptance so far
    shadow: int | None = None  # the draft it would have fed this step (checked for free, n-gram)
    matcher: Matcher | None = None  # its place in its output format's grammar (structured outputs)
    prompt_lps: list[float | None] | None = None  # prompt logprobs so far (params.prompt_logprobs)
    prompt_tops: list[list[tuple[int, float]] | None] | None = None
    replaces: int | None = None  # a prefix-cache hit: the finished request whose cache it took over,
    # released in the plan that announces this one

    def __post_init__(self) -> None:
        self.spec = self.params.spec()
        if self.params.prompt_logprobs is not None:
            self.prompt_lps, self.prompt_tops = [None], [None]

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


@dataclass
class _Parked:
    """A finished request's cache, left on its slot for a later prompt that begins the same way."""

    request_id: int
    tokens: list[int]  # what the slot's cache holds, position by position
    adapter: Any  # the LoraAdapter it was computed with (None: the base model)


MIN_PREFIX = 4  # a cache hit shorter than this is not worth a slot's other cache


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Scheduler:
    """Plans steps for many requests over `max_slots` KV slots of `max_length` tokens each, for
    an engine with capabilities `caps` (default: the native engine's).

    `max_tokens_per_step` bounds a step's cost (rows x width on a padded engine, tokens fed
    otherwise); `kv_capacity` bounds the tokens held by all running requests together (default:
    every slot full). `requests` holds the live (queued or running) requests.
    """

    def __init__(self, tokenizer: _Tok, *, eos_token_ids: Sequence[int], max_slots: int = 1,
                 max_length: int = 2048, max_tokens_per_step: int = 512, kv_capacity: int | None = None,
                 caps: EngineCaps | None = None, max_loras: int = 8,
                 speculative: SpeculativeConfig | None = None, vocab_size: int | None = None,
                 prefix_caching: bool = False) -> None:
        if max_slots < 1 or max_tokens_per_step < 1 or max_length < 2:
            raise ValueError("max_slots and max_tokens_per_step must be >= 1, max_length >= 2")
        self.tokenizer = tokenizer
        self.eos = frozenset(eos_token_ids)
        self.max_slots = max_slots
        self.max_length = max_length
        self.budget = max_tokens_per_step
        self.caps = caps or EngineCaps()
        self.chunk = min(self.budget, self.caps.prefill_width or self.budget)  # prompt chunk width
        self.kv_capacity = max_slots * max_length if kv_capacity is None else kv_capacity
        if self.kv_capacity < max_length:
            raise ValueError(f"kv_capacity ({self.kv_capacity}) must hold at least one full context ({max_length})")
        self.waiting: list[Request] = []  # sorted by rank
        self.running: list[Request] = []
        self.free_slots: list[int] = list(range(max_slots))  # a heap: the lowest slot is reused first
        self.requests: dict[int, Request] = {}
        self._ids = itertools.count()
        self._arrivals = itertools.count()
        self._finals: list[RequestOutput] = []  # last deltas of requests finished outside update()
        self._released: list[int] = []
        self.router = LoraRouter(max_loras)  # adapters: loaded, and which sit in the engine's table
        self._loads: list[AdapterLoad] = []
        self._steps = 0
        self._last_kind = "prefill"
        self.num_preemptions = 0
        # speculative decoding (speculative.py): drafts per decode step, sized by the cost model
        self.speculative = speculative
        if speculative is not None and speculative.method == "draft" and not self.caps.draft_model:
            raise SchedulerError("speculative method 'draft' needs an engine with a draft model")
        self.cost = StepCost(self.caps.step_overhead)
        # a request's drafter (method "ngram"; tests put an oracle or an always-wrong one here)
        self.new_drafter: Callable[[], Drafter] = lambda: NgramIndex(speculative.ngram_min if speculative else 1,
                                                                     speculative.ngram_max if speculative else 4)
        self.spec_stats = {"verify_steps": 0, "draft_tokens": 0, "accepted_tokens": 0, "emitted_tokens": 0}
        self.vocab_size = vocab_size
        self._constrainer: Constrainer | None = None  # made by the first constrained request
        # prefix caching: a finished request's slot keeps its cache ("parked") until another
        # request takes the slot; one whose prompt begins with those tokens skips computing them
        self.prefix_caching = prefix_caching and self.caps.prefix_reuse and \
            not (speculative is not None and speculative.method == "draft")
        self._parked: dict[int, _Parked] = {}
        self.prefix_stats = {"hits": 0, "cached_tokens": 0, "prompt_tokens": 0}

    @property
    def constrainer(self) -> Constrainer:
        """Output formats compiled over this tokenizer's vocabulary (structured outputs)."""
        if self._constrainer is None:
            size = self.vocab_size or int(getattr(self.tokenizer, "vocab_size", 0))
            self._constrainer = Constrainer(Vocabulary.of(self.tokenizer, size, sorted(self.eos)))
            self._constrainer.warm()
        return self._constrainer

    def check_format(self, fmt: OutputFormat) -> None:
        """Compile an output format now (a StructuredError if it cannot be served)."""
        if not self.caps.token_masks:
            raise StructuredError("this engine does not take token masks: structured outputs are not served")
        self.constrainer.grammar(fmt)

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
        if adapter is not None and adapter not in self.router.adapters:
            raise SchedulerError(f"no adapter {adapter!r} is loaded")
        rid = next(self._ids)
        seed = params.seed if params.seed is not None else random_seed()
        matcher = None
        if params.output_format is not None:
            self.check_format(params.output_format)
            matcher = self.constrainer.matcher(params.output_format)
        req = Request(rid, ids, params, seed, adapter, priority, next(self._arrivals),
                      detok=IncrementalDetokenizer(self.tokenizer), stops=StopStrings(params.stop), matcher=matcher)
        if self.speculative is not None and self.speculative.method == "draft":
            req.accept = Acceptance(DRAFT_PRIOR)
        self.requests[rid] = req
        if params.max_tokens == 0 and params.prompt_logprobs is None:
            self._finish_now(req, "length")
            return rid
        self._enqueue(req)
        return rid

    def abort(self, request_id: int, reason: str = "abort") -> None:
        """Finish a request now (finish_reason `reason`: "abort", or "error" when the engine
        failed under it); its slot is reused from the next step on. Unknown ids are ignored."""
        req = self.requests.get(request_id)
        if req is not None:
            self._finish_now(req, reason)

    def abort_all(self, reason: str = "abort") -> int:
        """Abort every live request; returns how many there were."""
        live = list(self.requests.values())
        for req in live:
            self._finish_now(req, reason)
        return len(live)

    # -- adapters ------------------------------------------------------------------------------
    def load_adapter(self, name: str, adapter: Any) -> None:
        """Make a LoRA adapter (a realm_web.lora.LoraAdapter) available to requests by `name`;
        a new one under a loaded name replaces it (refused while requests use it)."""
        self._check_unused(name, "replace")
        self.router.load(name, adapter)

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter; refused (AdapterError) while any request, running or queued, uses it."""
        self._check_unused(name, "unload")
        self.router.unload(name)

    def _check_unused(self, name: str, what: str) -> None:
        users = sum(1 for r in self.requests.values() if r.adapter == name)
        if users:
            raise AdapterInUse(f"cannot {what} adapter {name!r}: {users} requests use it", "name")

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._finals or self._released or self._loads)

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
            chosen = self._prefill_step(prefillers)
            self._last_kind = "prefill"
            seqs = [self._seq(r, toks) for r, toks in chosen]
        else:  # one token each: the last sample, or (after a preemption) an output token replayed
            decoders.sort(key=lambda r: r.rank)
            chosen = [(r, [r.token_at(r.num_computed)]) for r in decoders[: self.budget]]
            self._last_kind = "decode"  # ... plus drafts to verify, with speculation
            seqs = self._speculate(chosen) if self.speculative else [self._seq(r, toks) for r, toks in chosen]
        plan = StepPlan(seqs=seqs)
        for r, _ in chosen:
            if not r.announced:
                assert r.slot is not None
                plan.new_seqs.append(NewSeq(r.request_id, r.slot, r.spec, r.adapter, r.adapter_entry,
                                            r.num_computed if r.replaces is not None else 0))
                r.announced = True
                if r.replaces is not None:  # released with the announcement: the engine keeps the cache
                    self._released.append(r.replaces)
                    r.replaces = None
        if len(chosen) < len(self.running):  # rows that hold a cache and sit this step out
            ran = {r.request_id for r, _ in chosen}
            plan.idle = {r.slot: r.num_computed for r in self.running
                         if r.num_computed and r.request_id not in ran and r.slot is not None}
        for slot, p in self._parked.items():  # parked caches: padding must land past what is reused
            plan.idle.setdefault(slot, len(p.tokens))
        plan.released, self._released = self._released, []
        plan.adapter_loads, self._loads = self._loads, []
        return plan

    def _admit(self) -> None:
        """Take waiting requests in order while slots and capacity last. One whose adapter has no
        table entry to get waits without holding up those behind it (see lora.LoraRouter)."""
        router, i = self.router, 0
        self._steps += 1
        while i < len(self.waiting):
            req = self.waiting[i]
            if req.adapter is not None and not router.can_take(req.adapter):
                if req.blocked_since is None:
                    req.blocked_since = self._steps
                elif self._steps - req.blocked_since >= STARVE_STEPS:
                    router.want(req.adapter)  # it has waited long enough: an entry is closed for it
                i += 1
                continue
            if not (self.free_slots and self.kv_used() + req.length <= self.kv_capacity):
                victims = [r for r in self.running if r.priority < req.priority]
                if not victims:
                    break
                self._preempt(max(victims, key=lambda r: r.rank))
                continue
            self.waiting.pop(i)
            req.slot = self._take_slot(req)
            req.blocked_since = None
            if req.adapter is not None:
                entry, upload = router.take(req.adapter)
                req.adapter_entry = entry
                if upload:
                    self._loads.append(AdapterLoad(entry, req.adapter, router.adapters[req.adapter]))
            self.running.append(req)
        if router.waiting_for is not None and not any(r.adapter == router.waiting_for for r in self.waiting):
            router.release_wait()  # whoever waited for it is gone

    def _take_slot(self, req: Request) -> int:
        """A free slot for `req`: with prefix caching, the parked one whose cache begins its prompt
        longest (then it starts past those tokens), else the lowest free slot with no parked
        cache, else the lowest (whose cache is given up)."""
        self.prefix_stats["prompt_tokens"] += len(req.prompt_ids)
        if not self._parked:
            return heapq.heappop(self.free_slots)
        best, best_n = None, 0
        if req.prompt_lps is None:  # prompt logprobs need every position computed
            adapter = self.router.adapters.get(req.adapter) if req.adapter is not None else None
            for slot in self.free_slots:
                p = self._parked.get(slot)
                if p is None or p.adapter is not adapter:
                    continue
                n = min(common_prefix(p.tokens, req.prompt_ids), len(req.prompt_ids) - 1)  # one left to compute
                if n > best_n:
                    best, best_n = slot, n
        if best is not None and best_n >= MIN_PREFIX:
            slot = best
            self.free_slots.remove(slot)
            heapq.heapify(self.free_slots)
            req.num_computed = best_n
            req.replaces = self._parked.pop(slot).request_id
            self.prefix_stats["hits"] += 1
            self.prefix_stats["cached_tokens"] += best_n
            return slot
        clean = [s for s in self.free_slots if s not in self._parked]
        slot = min(clean) if clean else self.free_slots[0]
        self.free_slots.remove(slot)
        heapq.heapify(self.free_slots)
        gone = self._parked.pop(slot, None)
        if gone is not None:
            self._released.append(gone.request_id)  # its cache is given up
        return slot

    def _prefill_step(self, prefillers: list[Request]) -> list[tuple[Request, list[int]]]:
        """Prompt chunks for this step. Chunk boundaries never depend on the company a request
        keeps, so its numerics (and greedy tokens) are the same alone or batched: a prompt goes
        in whole when it fits in one chunk, else in chunks of exactly the chunk width."""
        first = min(prefillers, key=lambda r: r.rank)
        if self.caps.padded_span:
            return self._padded_prefill(prefillers, first)
        chosen = [self._chunk(first)]
        if self.caps.prefill_batch == "none" or (self.caps.prefill_batch == "fresh" and first.num_computed):
            return chosen
        used = len(chosen[0][1])
        for r in sorted(prefillers, key=lambda r: r.rank):  # rows run one by one: fill the budget
            if r is first or (self.caps.prefill_batch == "fresh" and r.num_computed):
                continue
            n = min(r.prompt_left, self.chunk)
            if used + n <= self.budget:
                chosen.append(self._chunk(r))
                used += n
        return chosen

    def _padded_prefill(self, prefillers: list[Request], first: Request) -> list[tuple[Request, list[int]]]:
        """For a padded engine: prompts of a contiguous span of slots, grown from the first
        request in line while the span feeds more tokens within the budget (rows x width). With
        `prefill_batch` "fresh", several rows share a step only when every row of the span
        starts from an empty cache (onnxruntime's GroupQueryAttention takes a multi-token step
        on top of earlier context one row at a time)."""
        by_slot = {r.slot: r for r in self.running}
        cand = sorted(prefillers, key=lambda r: r.slot or 0)
        lo = hi = cand.index(first)  # chosen: cand[lo..hi]
        fresh_only = self.caps.prefill_batch == "fresh"

        def fill(a: int, b: int) -> int:
            """Prompt tokens that cand[a..b] feed as one padded span, 0 if they cannot."""
            s0, s1 = cand[a].slot or 0, cand[b].slot or 0
            width = max(r.prompt_left for r in cand[a:b + 1])
            if width > self.chunk or (s1 - s0 + 1) * width > self.budget:
                return 0
            if fresh_only and any(r.num_computed for s in range(s0, s1 + 1) if (r := by_slot.get(s)) is not None):
                return 0
            if any(s in self._parked and s not in by_slot for s in range(s0, s1 + 1)):
                return 0  # a parked cache in the span would take the rows' padding
            return sum(r.prompt_left for r in cand[a:b + 1])

        real = fill(lo, hi)
        while real and self.caps.prefill_batch != "none":
            options = [(fill(a, b), a, b) for a, b in ((lo - 1, hi), (lo, hi + 1)) if 0 <= a and b < len(cand)]
            best = max(options, default=(0, lo, hi))
            if best[0] <= real:
                break
            real, lo, hi = best
        if not real:  # the first in line runs alone, in chunks
            return [self._chunk(first)]
        return [self._chunk(r) for r in cand[lo:hi + 1]]

    def _speculate(self, chosen: list[tuple[Request, list[int]]]) -> list[SeqStep]:
        """A decode step's rows with drafts where the policy finds them worth it (speculative.py)."""
        spec = self.speculative
        assert spec is not None
        if spec.adaptive and not choose_drafts([1.0], [spec.num_speculative_tokens], len(chosen) - 1,
                                               self.cost.overhead, True, self._draft_cost())[0]:
            for r, _ in chosen:  # not even drafts that always stand would pay in a batch this size
                r.shadow = None
            return [self._seq(r, toks) for r, toks in chosen]
        cands: list[tuple[Request, list[int] | int]] = []
        plain = 0
        for r, _ in chosen:
            r.shadow = None
            room = min(spec.num_speculative_tokens, r.params.max_tokens - len(r.output_ids) - 1,
                       self.max_length - r.length - 1)
            if r.pending != 1 or room <= 0 or (r.matcher is not None and (
                    spec.method != "ngram" or r.params.max_tokens - len(r.output_ids) <= CLOSE_WINDOW)):
                plain += 1  # replaying after a preemption, no room for a draft, or constrained (drafts of a model)
                continue
            if spec.method == "ngram":
                if r.drafter is None:
                    r.drafter = self.new_drafter()
                r.drafter.sync(r.all_ids)
                prop = r.drafter.propose(room)
                if prop and r.matcher is not None:  # drafts the output format refuses are not worth verifying
                    prop = prop[: r.matcher.drafts(prop)[0]]
                if not prop:
                    plain += 1
                    continue
                cands.append((r, prop))
            else:
                cands.append((r, room))
        ks = choose_drafts([r.accept.rate for r, _ in cands], [p if isinstance(p, int) else len(p) for _, p in cands],
                           plain, self.cost.overhead, spec.adaptive, self._draft_cost())
        spare = self.budget - len(chosen)  # draft tokens the step budget still holds
        picked: dict[int, tuple[list[int], int]] = {}
        for (r, offer), k in zip(cands, ks):
            k = min(k, max(0, spare))
            spare -= k
            if k and isinstance(offer, list):
                picked[r.request_id] = (offer[:k], 0)
            elif k:
                picked[r.request_id] = ([], k)
            elif isinstance(offer, list):
                r.shadow = offer[0]  # checked against the token this step samples
        out = []
        for r, toks in chosen:
            drafts, propose = picked.get(r.request_id, ([], 0))
            out.append(self._seq(r, toks + drafts, len(drafts), propose))
        return out

    def _draft_cost(self) -> float:
        """A draft-model token's cost in the policy's units (one draft run each)."""
        if self.speculative is None or self.speculative.method != "draft":
            return 0.0
        return self.cost.draft

    def calibrate(self, run_seconds: float, token_seconds: float, draft_seconds: float = 0.0) -> None:
        """The engine's measured step costs (a run's fixed seconds, seconds per fed token, a
        draft-model run's seconds): the speculative policy's lasting prior (StepCost.seed)."""
        self.cost.seed(run_seconds, token_seconds, draft_seconds)

    def observe_step(self, plan: StepPlan, seconds: float) -> None:
        """The measured duration of a step the engine ran: refits the speculative policy's cost
        model from decode steps (a verify row runs on its own: one run each, see speculative.py;
        the draft model's runs, one per draft position, are priced by StepCost.draft)."""
        if self.speculative is None or not plan.seqs or any(q.start == 0 for q in plan.seqs):
            return
        verify = sum(1 for q in plan.seqs if len(q.tokens) > 1 or q.propose)
        if verify < len(plan.seqs) and any(len(q.tokens) > 1 and not q.drafts for q in plan.seqs):
            return  # a prompt chunk
        runs = verify + (1 if verify < len(plan.seqs) else 0)
        self.cost.observe(runs, sum(len(q.tokens) + q.propose for q in plan.seqs), seconds,
                          draft_runs=max((q.propose for q in plan.seqs), default=0))

    def _chunk(self, req: Request) -> tuple[Request, list[int]]:
        end = req.num_computed + min(req.prompt_left, self.chunk)
        return req, req.prompt_ids[req.num_computed:end]

    def _seq(self, req: Request, tokens: list[int], drafts: int = 0, propose: int = 0) -> SeqStep:
        """A row's step: `tokens` (ending in `drafts` draft tokens, or followed by `propose` the
        engine drafts) and, when it reaches the end, a sample at the last position and after each
        draft, with the draws of the output indices they would take without speculation."""
        assert req.slot is not None
        start = req.num_computed
        sample = start + len(tokens) - drafts == req.length and req.params.max_tokens > 0  # the piece reaches the end
        n = 1 + drafts + propose if sample else 0
        out = len(req.output_ids)
        score: list[int] = []
        p = len(req.prompt_ids)
        if req.prompt_lps is not None and len(req.prompt_lps) < p and start < p:  # prompt logprobs still to get
            score = req.prompt_ids[start + 1: min(start + len(tokens) + 1, p)]
        masks: list[TokenMask | None] = []
        if n and req.matcher is not None and not req.matcher.free:
            budget = min(req.params.max_tokens - out, self.max_length - req.length)  # tokens it may still make
            masks = req.matcher.drafts(tokens[len(tokens) - drafts:])[1] if drafts else [req.matcher.mask(budget=budget)]
            if not any(masks):
                masks = []
        return SeqStep(seq_id=req.request_id, slot=req.slot, start=start, tokens=tokens,
                       num_samples=n, draws=[draw(req.seed, out + i) for i in range(n)] if not req.spec.greedy else [],
                       drafts=drafts, propose=propose, score=score, masks=masks)

    def update(self, plan: StepPlan, result: StepResult) -> list[RequestOutput]:
        """Apply an engine result to the plan it ran; returns the deltas of this step."""
        outputs, self._finals = self._finals, []
        for seq in plan.seqs:
            req = self.requests.get(seq.seq_id)
            if req is None or req.slot != seq.slot:
                continue  # aborted (or preempted) while the step ran: drop its token
            req.num_computed = seq.start + len(seq.tokens)
            if seq.score:
                self._scored(req, seq, result)
            if not seq.num_samples:
                if req.params.max_tokens == 0 and not req.in_prefill:  # prompt logprobs only
                    outputs.append(self._append(req, [], None))
                continue
            new = result.tokens.get(seq.seq_id, [])
            if len(new) != seq.num_samples:
                raise RuntimeError(f"the engine returned {len(new)} tokens for sequence {seq.seq_id}, "
                                   f"which asked for {seq.num_samples}")
            if seq.drafts or seq.propose:
                new = self._verify(req, seq, new, result)
            elif req.shadow is not None:  # what the n-gram drafter would have fed: a free check
                req.accept.observe(1, int(new[0] == req.shadow), shadow=True)
            elif self.speculative is not None:
                req.accept.relax()
            req.shadow = None
            outputs.append(self._append(req, new, result.logprobs.get(seq.seq_id), result.top_logprobs.get(seq.seq_id)))
        return outputs

    def _verify(self, req: Request, seq: SeqStep, samples: list[int], result: StepResult) -> list[int]:
        """A verify row's outcome (speculative.accepted_prefix): the tokens it emits; its cache
        stays valid up to the last accepted draft."""
        if seq.drafts:
            drafted = seq.tokens[len(seq.tokens) - seq.drafts:]
        else:
            drafted = result.drafts.get(seq.seq_id, [])
            if len(drafted) != seq.propose:
                raise RuntimeError(f"the engine proposed {len(drafted)} drafts for sequence {seq.seq_id}, "
                                   f"which asked for {seq.propose}")
        n = accepted_prefix(drafted, samples)
        req.num_computed = seq.start + len(seq.tokens) - seq.drafts + n
        req.accept.observe(len(drafted), n)
        st = self.spec_stats
        st["verify_steps"] += 1
        st["draft_tokens"] += len(drafted)
        st["accepted_tokens"] += n
        st["emitted_tokens"] += n + 1
        return samples[: n + 1]

    def _scored(self, req: Request, seq: SeqStep, result: StepResult) -> None:
        """Keep the prompt logprobs a prefill chunk brought (those not already kept: after a
        preemption the prompt is computed again)."""
        assert req.prompt_lps is not None and req.prompt_tops is not None
        lps = result.scores.get(seq.seq_id)
        if lps is None or len(lps) != len(seq.score):
            raise RuntimeError(f"the engine scored {len(lps or [])} tokens for sequence {seq.seq_id}, "
                               f"which asked for {len(seq.score)}")
        tops = result.score_tops.get(seq.seq_id)
        n = req.params.prompt_logprobs or 0
        skip = len(req.prompt_lps) - (seq.start + 1)
        if skip < 0:
            return
        req.prompt_lps += lps[skip:]
        req.prompt_tops += [t[:n] for t in tops[skip:]] if tops is not None else [[] for _ in lps[skip:]]

    def _append(self, req: Request, tokens: list[int], logprobs: list[float] | None,
                tops: list[list[tuple[int, float]]] | None = None) -> RequestOutput:
        p = req.params
        emitted: list[int] = []
        text = ""
        assert req.detok is not None and req.stops is not None
        hit = False
        m = req.matcher
        for tok in tokens:
            req.output_ids.append(tok)
            emitted.append(tok)
            if m is not None and tok in self.eos and m.accepting:  # the format ends here: even with ignore_eos
                req.finish_reason = "stop"
                break
            if (tok in self.eos and not p.ignore_eos) or tok in p.stop_token_ids:
                req.finish_reason = "stop"
                break
            if m is not None:
                if not m.advance(tok):
                    req.finish_reason = "error"  # the engine picked a token the mask ruled out
                    break
                if m.free:  # nothing is constrained from here on
                    req.matcher = m = None
            safe, hit = req.stops.feed(req.detok.add([tok]))
            text += safe
            if hit:
                req.finish_reason = "stop"
                break
            if m is not None and m.final:  # the format allows nothing more
                req.finish_reason = "stop"
                break
            if len(req.output_ids) >= p.max_tokens or req.length >= self.max_length:
                req.finish_reason = "length"
                break
        if not tokens and p.max_tokens == 0:
            req.finish_reason = "length"
        if req.finished:
            if not hit:  # emit what was held back: a partial character, a possible stop-string start
                tail, hit = req.stops.feed(req.detok.flush())
                text += tail + ("" if hit else req.stops.flush())
            self._release(req)
            del self.requests[req.request_id]
        req.text += text
        out = RequestOutput(req.request_id, emitted, text, req.finished, req.finish_reason,
                            logprobs[: len(emitted)] if logprobs is not None else None,
                            [t[: p.top_logprobs] for t in tops[: len(emitted)]] if tops is not None and p.top_logprobs
                            else None)
        if req.prompt_lps is not None:  # the first delta carries the prompt's logprobs
            out.prompt_logprobs, out.prompt_top_logprobs = req.prompt_lps, req.prompt_tops
            req.prompt_lps = req.prompt_tops = None
        return out

    def _finish_now(self, req: Request, reason: str) -> None:
        """Finish outside a step's update: the last delta goes out with the next update."""
        req.finish_reason = reason
        if req in self.waiting:
            self.waiting.remove(req)
        self._release(req)
        del self.requests[req.request_id]
        self._finals.append(RequestOutput(req.request_id, [], "", True, reason))

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
        adapter = self.router.adapters.get(req.adapter) if req.adapter is not None else None
        if req in self.running:
            self.running.remove(req)
            if req.adapter is not None:
                self.router.drop(req.adapter)
                req.adapter_entry = 0
        if req.replaces is not None:  # admitted on a parked cache but never announced: that cache goes
            self._released.append(req.replaces)
            req.replaces = None
        park = self.prefix_caching and req.finished and req.announced and req.slot is not None and req.num_computed > 0
        if req.slot is not None:
            if park:  # its cache stays on the slot for a later prompt that begins the same way
                # its prompt's positions only: those were computed by prompt steps, as a fresh prompt's
                # are; its answer's were computed one token at a time, and reusing them can move a
                # near tie (measured in int4: 1 of 8 chat turns equal with them, 8 of 8 without)
                self._parked[req.slot] = _Parked(req.request_id, req.prompt_ids[:req.num_computed], adapter)
            heapq.heappush(self.free_slots, req.slot)
            req.slot = None
        if req.announced:
            if not park:
                self._released.append(req.request_id)
            req.announced = False
