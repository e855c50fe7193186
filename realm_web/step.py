"""The step contract between the scheduler and an engine (docs/architecture.md).

`schedule() -> StepPlan`, `engine.run(plan) -> StepResult`, `update(plan, result) -> outputs`.
Plain data only, so the same plan crosses to numpy, to onnxruntime-web or to a test's hand.

Who owns what:

* The scheduler owns every row's KV length; engines keep no count of their own. A `SeqStep`
  says where its tokens go: the row keeps positions `[0, start)` and the tokens are written at
  `start, start + 1, ...`. Whatever the engine held past `start` is dropped, which is how a row
  is rolled back (a rejected draft). Rows that hold a cache but feed nothing this step are listed
  in `StepPlan.idle` with their valid length, so that an engine that pads them knows where
  padding may land: running requests that sit the step out, and parked prefix caches (the
  positions a later prompt may reuse). A slot not listed holds nothing worth keeping.
* Per-request constants come once: `new_seqs` announces a request when it starts on a slot (its
  sampling spec and adapter); `released` lists the requests that gave their slot up since the
  last plan (finished, aborted or preempted), whose state the engine may drop. A request that
  comes back after a preemption is announced again.
* A row verifying drafts (speculative.py) feeds `[last, d1..dk]` with `drafts = k` and a
  sample at each of the k+1 positions; a row with `propose = k` feeds `[last]` and the engine's
  draft model proposes the k drafts (returned in `StepResult.drafts`). The scheduler applies the
  accept rule and starts the row's next step after the accepted tokens.
* `copies` copy a prefix of one slot's cache into another before the step runs, and
  `adapter_loads` put a LoRA adapter into an entry of the engine's adapter table (see
  realm_web/lora.py's LoraRouter).
* An engine says what it can run (`EngineCaps`); the scheduler plans within that.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class SamplingSpec:
    """How an engine picks a token from one position's logits: repetition penalty over the row's
    tokens, then greedy (temperature 0) or temperature -> top-k -> top-p -> min-p -> the inverse
    CDF at the step's draw, over the candidates in canonical order (logit descending, token id
    ascending). A row's `masks` (SeqStep) first rule tokens out (their logits become -inf).
    `logprobs`: also return the picked token's log-probability; `top_logprobs` (0..20): also the
    N most likely tokens of each sampled or scored position (logprob descending, id ascending).
    Log-probabilities are always the log-softmax of the model's raw logits (no penalty, mask or
    temperature: vLLM's default). Every engine implements exactly this; tests/golden/sampling.json
    holds the vectors they all must reproduce."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def plain_greedy(self) -> bool:
        """An argmax over the raw logits is all it takes (no penalty, no logprob)."""
        return self.temperature == 0.0 and self.repetition_penalty == 1.0 and not self.logprobs \
            and not self.top_logprobs

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SamplingSpec":
        return cls(**d)


@dataclass(frozen=True)
class NewSeq:
    """A request starting on a slot: which slot, and what stays the same for every step it runs
    (its sampling spec; its adapter, by name and by the table entry it sits in: 0 for none, and
    the entry does not change while the request runs). When the plan releases it, the engine
    may drop that slot's cache, except where a NewSeq of the same plan names the slot with
    `cached` > 0: a prefix-cache hit, the slot's first `cached` positions are this request's
    prefix (left there by the request released), and the engine keeps them."""

    seq_id: int
    slot: int
    sampling: SamplingSpec
    adapter: str | None = None
    adapter_entry: int = 0
    cached: int = 0


@dataclass(frozen=True)
class AdapterLoad:
    """Before the step: upload `adapter` (a realm_web.lora.LoraAdapter) into table entry `entry`
    (whatever adapter sat there is no longer used by any request)."""

    entry: int
    name: str
    adapter: Any


@dataclass(frozen=True)
class KVCopy:
    """Before the step: positions [0, length) of slot `src`'s cache become those of slot `dst`."""

    src: int
    dst: int
    length: int


@dataclass(frozen=True, eq=False)
class TokenMask:
    """The tokens a constrained position may take (realm_web/constrain.py): `allowed[t]` is 1 for
    an allowed token id t, 0 otherwise, over the model's whole vocabulary. `key` names it for
    good: the same key always means the same mask, so an engine may keep it (the web bridge
    uploads each key once)."""

    key: int
    allowed: bytes


@dataclass(slots=True)
class SeqStep:
    """What one request does in one step."""

    seq_id: int
    slot: int  # KV-cache slot (batch row) the request owns
    start: int  # the row's valid KV length before this step: tokens[0] goes to position `start`
    tokens: list[int]  # tokens fed this step (a prefill chunk, the last sampled token, drafts)
    num_samples: int = 0  # pick a token at each of the last `num_samples` positions of `tokens`
    draws: list[float] = field(default_factory=list)  # one uniform draw per sample (empty when greedy)
    drafts: int = 0  # the last `drafts` of `tokens` are draft tokens to verify (speculative.py)
    propose: int = 0  # the engine's draft model proposes this many tokens after `tokens`, verified in this step
    score: list[int] = field(default_factory=list)  # score[j]: a token to score at position j of `tokens` (prompt logprobs)
    masks: list[TokenMask | None] = field(default_factory=list)  # per sample (empty: none): the tokens it may pick


@dataclass(slots=True)
class StepPlan:
    seqs: list[SeqStep]
    new_seqs: list[NewSeq] = field(default_factory=list)  # requests announced by this plan
    released: list[int] = field(default_factory=list)  # seq ids that left their slot since the last plan
    idle: dict[int, int] = field(default_factory=dict)  # slot -> valid length, for held slots feeding nothing
    copies: list[KVCopy] = field(default_factory=list)
    adapter_loads: list[AdapterLoad] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.seqs)

    @property
    def empty(self) -> bool:
        """Nothing for an engine to do or to learn."""
        return not (self.seqs or self.new_seqs or self.released or self.copies or self.adapter_loads)


@dataclass(slots=True)
class StepResult:
    """Per seq_id of a row that asked for samples: one token per sample (rows that sample
    nothing may be left out), and, for requests whose spec asks, their log-probabilities
    (`logprobs`) and each sample position's top N (`top_logprobs`: [token id, logprob] pairs).
    A row with `score` gets each scored token's logprob in `scores` (and the top N of its
    position in `score_tops`). For a row with `propose`, `drafts` holds the tokens the engine's
    draft model proposed (the samples are at `tokens[-1]` and after each of them)."""

    tokens: dict[int, list[int]]
    logprobs: dict[int, list[float]] = field(default_factory=dict)
    drafts: dict[int, list[int]] = field(default_factory=dict)
    top_logprobs: dict[int, list[list[tuple[int, float]]]] = field(default_factory=dict)
    scores: dict[int, list[float]] = field(default_factory=dict)
    score_tops: dict[int, list[list[tuple[int, float]]]] = field(default_factory=dict)


PrefillBatch = Literal["fresh", "any", "none"]


@dataclass(frozen=True)
class EngineCaps:
    """What an engine can run in one step. The scheduler plans from these; the engine refuses a
    plan outside them.

    * `padded_span`: a step runs as one padded batch over the contiguous span of slots its rows
      occupy, so it costs (rows of the span) x (widest row) and idle rows in the span are fed
      padding. Otherwise rows run one after another and a step costs the tokens it feeds.
    * `prefill_batch`: which multi-token rows may share a step: "fresh" only rows that start from
      an empty cache (with `padded_span`, every row of the span must be empty: onnxruntime's
      GroupQueryAttention takes a multi-token step on top of earlier context one row at a time),
      "any", or "none" (one multi-token row per step).
    * `prefill_width`: the most tokens one row may feed in a step (None: the step budget).
    * `multi_position_logits`: a row may ask for samples at several positions (verification).
    * `adapters`: per-row LoRA adapters. `token_masks`: per-row allowed-token masks.
    * `kv_copy`: the engine performs `StepPlan.copies`.
    * `draft_model`: the engine holds a draft model and serves `SeqStep.propose`.
    * `prefix_reuse`: the engine keeps a released slot's cache for a NewSeq with `cached`.
    * `step_overhead`: a run's fixed cost in units of one fed token (the speculative policy's
      starting point; the LLM facade refits it from measured steps).
    """

    padded_span: bool = True
    prefill_batch: PrefillBatch = "fresh"
    prefill_width: int | None = None
    multi_position_logits: bool = True
    adapters: bool = False
    token_masks: bool = False
    kv_copy: bool = True
    draft_model: bool = False
    prefix_reuse: bool = False
    step_overhead: float = 4.0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EngineCaps":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown engine capabilities {sorted(unknown)}")
        caps = cls(**d)
        if caps.prefill_batch not in ("fresh", "any", "none"):
            raise ValueError(f"prefill_batch must be 'fresh', 'any' or 'none', not {caps.prefill_batch!r}")
        if caps.prefill_width is not None and caps.prefill_width < 1:
            raise ValueError("prefill_width must be >= 1")
        return caps
