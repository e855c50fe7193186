"""Speculative decoding (sans-IO): drafting, the one accept rule, and the policy that sizes drafts.

Theory of operation
-------------------
A decoding request normally feeds one token per step (its last sample) and gets one token
back. With speculation it feeds `[last, d1..dk]`, k *draft* tokens guessed cheaply, and asks the
engine for a sample at each of the k+1 positions (`SeqStep.num_samples = k + 1`, one draw per
position: `draw(seed, output index)`, the very draws the request would use without
speculation). Sample i is what the model picks after `last, d1..di`, so while the samples equal
the drafts they are exactly the tokens plain decoding would have produced, one per step; the
first sample that differs is still a correct token (the one plain decoding picks there), and
after it nothing is known. `accepted_prefix` is that rule, written once: a verify step emits the
n matching drafts plus the next sample (a correction, or a bonus token when all k match), and
the row's valid KV length becomes `start + 1 + n`: the rejected drafts' cache entries lie past
it and are overwritten by the next step (step.py's rollback). With a deterministic drafter
(n-gram lookup, or a greedy draft model), this makes speculative output identical to plain
output, greedy and seeded, whatever top-k / top-p / min-p / penalty say, as long as the engine's
logits at a position do not depend on how many positions its step computes.

Drafters:
  * "ngram" (prompt lookup): `NgramIndex` keeps, for one request, every n-gram (n = 1..4) of
    its prompt + output and where it last occurred; the proposal continues the longest suffix
    of the sequence that occurred before. Pure Python, no model.
  * "draft": a second, cheaper model in the engine proposes the tokens (`SeqStep.propose`); its
    drafts come back in `StepResult.drafts` and go through the same rule.

Policy (`choose_drafts`): a draft token is worth its cost only if it is likely to be accepted.
Each request keeps an acceptance estimate (`Acceptance`, from its own verify steps and, for the
n-gram drafter, from free "shadow" checks of what it would have proposed); the expected number
of accepted tokens for k drafts at per-token acceptance a is a + a^2 + ... + a^k. A step's cost
is modelled as `overhead` per engine run plus one unit per token fed (`StepCost`, calibrated
from measured steps by the LLM facade); today's engines run a verify row as its own run (the
attention kernel takes several new tokens on top of a cache one row at a time), so a verify row
costs `overhead + k + 1` while a plain decode row costs 1 inside the batch. The policy gives each
row the k that raises the step's expected tokens per unit of cost, and none unless that beats
plain decoding by a margin; as the batch grows a plain row gets cheaper, so speculation turns
itself down.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Protocol, Sequence

METHODS = ("ngram", "draft")
MAX_SPECULATIVE_TOKENS = 16


class SpeculativeError(ValueError):
    """Invalid speculative-decoding settings."""


@dataclass(frozen=True)
class SpeculativeConfig:
    """How to speculate. `method`: "ngram" (prompt lookup) or "draft" (a draft model);
    `num_speculative_tokens`: the most draft tokens per verify step (k); `draft_model`: a model
    directory for "draft" (None: the target's own export in `draft_dtype`, by default the
    one `default_draft_dtype` picks: int8, else int4);
    `ngram_min` / `ngram_max`: the n-gram lengths the lookup tries (longest first); `adaptive`:
    size drafts per request and per step (else always k when there are drafts)."""

    method: str = "ngram"
    num_speculative_tokens: int = 4
    draft_model: str | None = None
    draft_dtype: str | None = None
    ngram_min: int = 1
    ngram_max: int = 4
    adaptive: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise SpeculativeError(msg)

        need(self.method in METHODS, f"speculative method must be one of {', '.join(METHODS)}, not {self.method!r}")
        k = self.num_speculative_tokens
        need(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= MAX_SPECULATIVE_TOKENS,
             f"num_speculative_tokens must be an integer in [1, {MAX_SPECULATIVE_TOKENS}], got {k!r}")
        need(isinstance(self.ngram_min, int) and isinstance(self.ngram_max, int) and 1 <= self.ngram_min <= self.ngram_max <= 8,
             f"ngram_min / ngram_max must satisfy 1 <= min <= max <= 8, got {self.ngram_min!r} / {self.ngram_max!r}")
        need(self.draft_model is None or (isinstance(self.draft_model, str) and bool(self.draft_model)),
             "draft_model must be a model directory")
        need(self.draft_dtype is None or self.draft_dtype in ("fp32", "fp16", "int8", "int4"),
             f"draft_dtype must be fp32, fp16, int8 or int4, not {self.draft_dtype!r}")
        need(self.method == "draft" or (self.draft_model is None and self.draft_dtype is None),
             "draft_model and draft_dtype need method 'draft'")
        need(isinstance(self.adaptive, bool), "adaptive must be true or false")

    @classmethod
    def of(cls, value: "SpeculativeConfig | Mapping[str, Any] | str | None") -> "SpeculativeConfig | None":
        """A config from what users pass: None, a method name, a mapping of these fields."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            return cls(method=value)
        if isinstance(value, Mapping):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise SpeculativeError(f"unknown speculative settings {sorted(unknown)}")
            return cls(**dict(value))
        raise SpeculativeError(f"speculative takes a method name or a mapping, not {type(value).__name__}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- the accept rule --------------------------------------------------------------------------
def accepted_prefix(drafts: Sequence[int], samples: Sequence[int]) -> int:
    """How many drafts a verify step accepts. samples[i] is the token the ordinary sampler picked
    (with the request's own draw for that output index) after the fed tokens up to drafts[i-1]:
    exactly what plain decoding would emit there. So drafts[i] stands while it equals samples[i];
    the step then emits samples[: n + 1]: the n accepted drafts plus one more sampled token (the
    correction at the first mismatch, or a bonus when every draft stood)."""
    n = 0
    for d, s in zip(drafts, samples):
        if d != s:
            break
        n += 1
    return n


# -- drafters --------------------------------------------------------------------------------
class Drafter(Protocol):
    """Proposes draft tokens for one request from its tokens so far (prompt + output)."""

    def sync(self, tokens: Sequence[int]) -> None:
        """The request's tokens now (they only ever grow while it runs)."""

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that may come next (fewer, or none, when it has no guess)."""


class NgramIndex:
    """Prompt lookup over one request's tokens: for each n in [min_n, max_n], the latest
    position that followed each n-gram. `propose(k)` continues the longest suffix of the
    sequence that occurred earlier with the (up to k) tokens that followed it there."""

    __slots__ = ("min_n", "max_n", "tokens", "_last")

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self._last: dict[tuple[int, ...], int] = {}  # n-gram -> the index right after its latest occurrence

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens to the indexed sequence."""
        t, last = self.tokens, self._last
        for tok in tokens:
            end = len(t)  # the n-grams ending just before `tok` are followed by it (index `end`)
            for n in range(self.min_n, min(self.max_n, end) + 1):
                last[tuple(t[end - n:end])] = end
            t.append(int(tok))

    def sync(self, tokens: Sequence[int]) -> None:
        """Index `tokens`, a sequence that extends the indexed one (a request's prompt + output)."""
        if len(tokens) > len(self.tokens):
            self.extend(tokens[len(self.tokens):])

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest earlier occurrence of the sequence's suffix."""
        t = self.tokens
        end = len(t)
        if k <= 0:
            return []
        for n in range(min(self.max_n, end - 1), self.min_n - 1, -1):
            j = self._last.get(tuple(t[end - n:]))
            if j is not None and j < end:
                return t[j:j + k]
        return []


# Own-export drafting: which of a model's exports drafts for a target in another. int8 first:
# measured on this model (2-core CPU, ctx 100) an int8 run of one token costs 7.2 ms against
# int4's 8.3 ms (the int4 graph carries Q4_1's exact `m * blocksum(x)` correction per linear,
# about a third of its time) and the int8 draft agrees with the fp32 target more often (chat:
# 0.95 per token against 0.85), so it gave 1.59x where int4 gave 1.15x (bench/speculative.py).
DRAFT_DTYPES = ("int8", "int4", "fp16")


def default_draft_dtype(exports: Mapping[str, int], target: str) -> str | None:
    """The export to draft with for a `target` export of the same model: the first of
    DRAFT_DTYPES that the model has and that is smaller than the target (`exports`: dtype ->
    bytes), or None when there is none."""
    size = exports.get(target)
    for d in DRAFT_DTYPES:
        if d != target and d in exports and (size is None or exports[d] < size):
            return d
    return None


# -- acceptance and the policy -----------------------------------------------------------------
PRIOR = 0.5  # acceptance assumed before a request has shown any (n-gram lookup)
DRAFT_PRIOR = 0.8  # ... for a draft model (the target's own weights accept ~0.85 on chat in int4, ~0.95 in int8)
PRIOR_WEIGHT = 2.0  # ... worth this many draft positions
DECAY = 0.9  # older evidence fades per verify (acceptance changes as the text does)


class Acceptance:
    """One request's per-token draft acceptance estimate: accepted / checked draft positions,
    with older evidence decayed and a weak prior."""

    __slots__ = ("prior", "hits", "trials", "proposed", "accepted", "verifies")

    def __init__(self, prior: float = PRIOR) -> None:
        self.prior = prior
        self.hits = 0.0
        self.trials = 0.0
        self.proposed = 0  # drafts fed (for metrics)
        self.accepted = 0
        self.verifies = 0

    def observe(self, drafted: int, accepted: int, shadow: bool = False) -> None:
        """A check of `drafted` draft tokens of which the first `accepted` stood (the positions
        after the first rejection were not checked)."""
        checked = min(drafted, accepted + 1)
        self.hits = self.hits * DECAY + accepted
        self.trials = self.trials * DECAY + checked
        if not shadow:
            self.proposed += drafted
            self.accepted += accepted
            self.verifies += 1

    def relax(self) -> None:
        """A step without a check: the evidence fades toward the prior, so that a request that
        stopped speculating tries again once its text may have changed."""
        self.hits *= DECAY
        self.trials *= DECAY

    @property
    def rate(self) -> float:
        return (self.hits + self.prior * PRIOR_WEIGHT) / (self.trials + PRIOR_WEIGHT)


def expected_accepted(rate: float, k: int) -> float:
    """Expected accepted drafts out of k at per-token acceptance `rate`: rate + rate^2 + ... + rate^k."""
    total, p = 0.0, 1.0
    for _ in range(k):
        p *= rate
        total += p
    return total


@dataclass
class StepCost:
    """A step's cost in units of one fed token: `overhead` per engine run plus one per token,
    plus `draft` per draft-model run (0 without a draft model). `observe` refits overhead from
    measured steps (runs, tokens, seconds) by least squares, older steps fading; `seed` adds a
    lasting prior (an engine's own calibration) so that noisy timings cannot swing the fit."""

    overhead: float = 4.0
    draft: float = 0.0
    _s: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)  # sums rr, rt, tt, ry, ty
    _prior: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)
    _token_seconds: float = 0.0  # the last fit's seconds per token (to price draft runs)

    def seed(self, run_seconds: float, token_seconds: float, draft_seconds: float = 0.0, weight: float = 32.0) -> None:
        """An engine's calibration: a run costs `run_seconds` plus `token_seconds` per token fed, a
        draft-model run `draft_seconds`. Kept as `weight` steps' worth of evidence, never faded."""
        if not (run_seconds > 0 and token_seconds > 0):
            return
        self.overhead = min(500.0, max(0.25, run_seconds / token_seconds))
        self.draft = max(0.0, draft_seconds / token_seconds)
        self._token_seconds = token_seconds
        pts = [(1.0, 1.0), (1.0, 8.0)]  # a plain run and a run of 8 tokens, as the calibration prices them
        acc = [0.0] * 5
        for r, t in pts:
            y = r * run_seconds + t * token_seconds
            for i, v in enumerate((r * r, r * t, t * t, r * y, t * y)):
                acc[i] += v * weight / len(pts)
        self._prior = (acc[0], acc[1], acc[2], acc[3], acc[4])

    def observe(self, runs: float, tokens: float, seconds: float, draft_runs: float = 0.0, fade: float = 0.98) -> None:
        """A measured step: `runs` engine runs feeding `tokens` tokens, plus `draft_runs` runs of
        the draft model (priced at `draft` tokens each), took `seconds`."""
        if runs <= 0 or tokens <= 0 or not seconds > 0:
            return
        tokens = tokens + self.draft * draft_runs
        rr, rt, tt, ry, ty = (v * fade for v in self._s)
        self._s = (rr + runs * runs, rt + runs * tokens, tt + tokens * tokens, ry + runs * seconds, ty + tokens * seconds)
        rr, rt, tt, ry, ty = (v + p for v, p in zip(self._s, self._prior))
        det = rr * tt - rt * rt
        if det <= 1e-3 * rr * tt:  # steps all alike so far: no fit yet
            return
        a = (ry * tt - rt * ty) / det  # seconds per run
        b = (rr * ty - rt * ry) / det  # seconds per token
        if b > 0 and a > 0:
            self.overhead = min(500.0, max(0.25, a / b))
            if self._token_seconds > 0:  # draft runs keep their measured seconds
                self.draft *= self._token_seconds / b
                self._token_seconds = b


MARGIN = 1.05  # a plan with drafts must promise this much more than plain decoding


def choose_drafts(rates: Sequence[float], available: Sequence[int], plain_rows: int, overhead: float,
                  adaptive: bool = True, draft_cost: float = 0.0) -> list[int]:
    """How many drafts each candidate row feeds this step (0: decode plainly). `rates[i]` is a
    row's acceptance estimate and `available[i]` the drafts it has (at most k); `plain_rows`
    the other rows decoding one token in the batched run. A verify row runs on its own: it
    costs `overhead + 1 + k` units against 1 inside the batch (see the module docstring), plus
    `draft_cost` per draft token a draft model makes (0 for n-gram lookup)."""
    n = len(rates)
    ks = [0] * n
    if not adaptive:
        return list(available)
    tokens = float(plain_rows + n)  # expected tokens this step
    cost = overhead + plain_rows + n  # one batched run
    batched = plain_rows + n
    for i in sorted(range(n), key=lambda i: -rates[i]):
        best, best_k, best_cost = tokens / cost, 0, cost
        for k in range(1, available[i] + 1):
            c = cost - 1 + overhead + 1 + k + k * draft_cost - (overhead if batched == 1 else 0.0)
            value = (tokens + expected_accepted(rates[i], k)) / c
            if value > best * (MARGIN if best_k == 0 else 1.0):
                best, best_k, best_cost = value, k, c
        if best_k:
            ks[i] = best_k
            tokens += expected_accepted(rates[i], best_k)
            cost = best_cost
            batched -= 1
    return ks
