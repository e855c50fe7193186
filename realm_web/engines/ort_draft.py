"""The draft model of speculative method "draft" (realm_web/speculative.py) in the native engine.

Theory of operation
-------------------
A draft model is a second, cheaper model with the target's tokenizer: the target's own export
in a lower precision (int4 drafting for an fp32 target) or a smaller model. It is an
`OrtNativeEngine` of its own, with its own KV cache over the same slots and context, and the
target engine drives it inside a step: for every row with `SeqStep.propose = k` it

  1. catches the draft's cache up with the row's tokens (a multi-token row runs alone: the
     attention kernel's rule; rows with only their last token to feed share one run), which
     gives the first draft token;
  2. decodes the other k - 1 greedily, one batched run per position over the rows still drafting.

Greedy drafting makes the drafts a deterministic function of the row's tokens, which is what
keeps verification lossless (speculative.accepted_prefix). The draft's cache is kept in step
with the target's without a second count of lengths: the draft engine keeps each slot's tokens
(as every OrtNativeEngine does) and `synced[slot]`, how many of them are known to equal the
target's. The target lowers it when a plan rewrites a row below it (a rollback, a fresh request,
a prefix copy). At proposal time the equal prefix is extended over the draft's own tail (the
drafts the target accepted need no second pass) and only what follows is fed: entries past it
are stale and the feed overwrites them, the same rollback the target uses.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from ..manifest import Manifest
from ..speculative import SpeculativeError
from ..step import KVCopy, SamplingSpec, SeqStep, StepPlan, StepResult


class DraftEngine(Protocol):
    """What the draft model needs of its engine (an OrtNativeEngine; named here by its shape so
    that the two modules do not import each other)."""

    manifest: Manifest
    max_slots: int
    _specs: dict[int, SamplingSpec]
    _tokens: list[list[int]]

    def _run(self, plan: StepPlan) -> StepResult: ...

    def _drop_slot(self, slot: int) -> None: ...

    def _copy(self, c: KVCopy) -> None: ...

    def close(self) -> None: ...


class DraftError(SpeculativeError):
    """A draft model that cannot draft for this target (another tokenizer, a shorter context)."""


class DraftModel:
    """Greedy drafts from a second engine whose cache follows the target's rows."""

    def __init__(self, engine: DraftEngine, target: Manifest) -> None:
        m = engine.manifest
        if m.vocab_size != target.vocab_size:
            raise DraftError(f"the draft model's vocabulary has {m.vocab_size} tokens, the target's {target.vocab_size}: "
                             "a draft model must share the target's tokenizer")
        if m.path(m.tokenizer).read_bytes() != target.path(target.tokenizer).read_bytes():
            raise DraftError(f"the draft model's tokenizer ({m.path(m.tokenizer)}) is not the target's "
                             f"({target.path(target.tokenizer)}): a draft model must share the target's tokenizer")
        self.engine = engine
        self.synced = [0] * engine.max_slots  # per slot: draft tokens known equal to the target's
        for slot in range(engine.max_slots):  # the draft's rows are named by their slot
            engine._specs[slot] = SamplingSpec()

    # -- following the target's rows -------------------------------------------------------------
    def cut(self, slot: int, start: int) -> None:
        """The target rewrites `slot` from position `start` on."""
        if start < self.synced[slot]:
            self.synced[slot] = start

    def drop(self, slot: int) -> None:
        """Nobody holds `slot` any more."""
        self.synced[slot] = 0
        self.engine._drop_slot(slot)

    def copy(self, c: KVCopy) -> None:
        """The target copied a prefix of one slot into another: the draft copies what it holds of it."""
        n = min(c.length, self.synced[c.src], len(self.engine._tokens[c.src]))
        self.engine._copy(KVCopy(c.src, c.dst, n))
        self.synced[c.dst] = n

    # -- drafting ------------------------------------------------------------------------------
    def propose(self, rows: Sequence[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        """Greedy drafts for each (slot, the row's tokens including the one it feeds, k)."""
        e = self.engine
        first: list[SeqStep] = []
        for slot, hist, k in rows:
            held = e._tokens[slot]
            c = min(self.synced[slot], len(held))
            end = min(len(held), len(hist) - 1)  # at least the last token is fed: its logits give d1
            while c < end and held[c] == hist[c]:
                c += 1
            first.append(SeqStep(seq_id=slot, slot=slot, start=c, tokens=hist[c:], num_samples=1))
        drafts: dict[int, list[int]] = {slot: [] for slot, _, _ in rows}
        single = [q for q in first if len(q.tokens) == 1]
        for group in ([[q] for q in first if len(q.tokens) > 1] + ([single] if single else [])):
            for slot, tok in self._run(group).items():
                drafts[slot].append(tok)
        for slot, hist, _ in rows:
            self.synced[slot] = len(hist)
        want = {slot: k for slot, _, k in rows}
        pos = {slot: len(hist) for slot, hist, _ in rows}
        while True:
            step = [SeqStep(seq_id=s, slot=s, start=pos[s], tokens=[d[-1]], num_samples=1)
                    for s, d in drafts.items() if len(d) < want[s]]
            if not step:
                return drafts
            for slot, tok in self._run(step).items():
                drafts[slot].append(tok)
                pos[slot] += 1

    def _run(self, seqs: list[SeqStep]) -> dict[int, int]:
        """One run of the draft engine; other slots of its span keep their entries (idle)."""
        e = self.engine
        fed = {q.slot for q in seqs}
        idle = {s: len(t) for s, t in enumerate(e._tokens) if t and s not in fed}
        res = e._run(StepPlan(seqs=seqs, idle=idle))
        return {q.slot: res.tokens[q.seq_id][0] for q in seqs}
