"""The step contract between the scheduler and an engine (see DESIGN.md).

`schedule() -> StepPlan`, `engine.run(plan) -> StepResult`, `update(plan, result) -> outputs`.
Plain data only, so the same plan crosses to numpy, to onnxruntime-web or to a test's hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SeqStep:
    """What one request does in one step."""

    seq_id: int
    slot: int  # KV-cache slot (batch row) the request owns
    tokens: list[int]  # tokens fed this step (a prefill chunk or the last sampled token)
    start: int  # position of tokens[0]: how many tokens the slot already holds
    sample: bool  # sample a token after this step (False for a prefill chunk that is not the last)
    sampling: dict[str, Any] = field(default_factory=dict)  # SamplingParams.engine_view()
    draw: float = 0.0  # uniform draw for the sampled token (ignored when greedy)
    history: list[int] | None = None  # prompt + output so far, sent only for repetition penalty
    logprobs: bool = False
    adapter: str | None = None


@dataclass
class StepPlan:
    seqs: list[SeqStep]
    freed_slots: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.seqs)


@dataclass
class StepResult:
    """Per seq_id: the sampled tokens (empty when the step did not sample) and their logprobs."""

    tokens: dict[int, list[int]]
    logprobs: dict[int, list[float]] = field(default_factory=dict)
