"""Sampling parameters, validation, and the seeded random draws every engine shares.

The core never touches a logits vector: it hands each engine a `SamplingSpec` (step.py, which
states the rule) once per request, plus one uniform draw per sampled token, derived only from
(seed, request step). Every engine applies the same rule, so a seeded request yields the same
tokens on every engine whose logits agree.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field, replace
from typing import Any

from .step import SamplingSpec


MAX_LOGPROBS = 20  # the most alternatives a position reports (OpenAI's limit)


class SamplingError(ValueError):
    """Invalid sampling parameters."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 means greedy."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    logprobs: bool = False  # each output token's logprob (the log-softmax of the raw logits)
    top_logprobs: int = 0  # and the N most likely tokens at each output position (0..20)
    prompt_logprobs: int | None = None  # each prompt token's logprob (the first: None) and its position's top N
    # structured outputs (realm_web/structured): at most one of these
    response_format: Any = None  # OpenAI's {"type": "json_object"} / {"type": "json_schema", "json_schema": {...}}
    json_schema: Any = None  # a JSON schema the output must validate against
    regex: str | None = None  # a regex the whole output must match
    choice: tuple[str, ...] | None = None  # the output is one of these strings
    output_format: Any = None  # a realm_web.structured.OutputFormat (what the four above become)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.choice is not None and not isinstance(self.choice, str):
            object.__setattr__(self, "choice", tuple(self.choice))
        if any(x is not None for x in (self.response_format, self.json_schema, self.regex, self.choice)):
            from .structured import OutputFormat, StructuredError

            if self.output_format is not None:
                raise SamplingError("give output_format or one of response_format / json_schema / regex / choice")
            try:
                fmt = OutputFormat.of(self.response_format, json_schema=self.json_schema, regex=self.regex,
                                      choice=self.choice)
            except StructuredError as e:
                raise SamplingError(str(e)) from None
            object.__setattr__(self, "output_format", fmt)
            for k in ("response_format", "json_schema", "regex", "choice"):
                object.__setattr__(self, k, None)
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise SamplingError(msg)

        need(isinstance(self.max_tokens, int) and not isinstance(self.max_tokens, bool) and self.max_tokens >= 0,
             f"max_tokens must be a non-negative integer, got {self.max_tokens!r}")
        need(_is_num(self.temperature) and self.temperature >= 0, f"temperature must be >= 0, got {self.temperature!r}")
        need(isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be an integer >= 0, got {self.top_k!r}")
        need(_is_num(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        need(_is_num(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}")
        need(_is_num(self.repetition_penalty) and self.repetition_penalty > 0,
             f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        need(self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)),
             f"seed must be an integer, got {self.seed!r}")
        need(all(isinstance(s, str) and s for s in self.stop), "stop must be a list of non-empty strings")
        need(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids), "stop_token_ids must be non-negative integers")
        need(isinstance(self.top_logprobs, int) and not isinstance(self.top_logprobs, bool)
             and 0 <= self.top_logprobs <= MAX_LOGPROBS, f"top_logprobs must be an integer in [0, {MAX_LOGPROBS}], "
             f"got {self.top_logprobs!r}")
        need(self.prompt_logprobs is None or (isinstance(self.prompt_logprobs, int)
                                              and not isinstance(self.prompt_logprobs, bool)
                                              and 0 <= self.prompt_logprobs <= MAX_LOGPROBS),
             f"prompt_logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {self.prompt_logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def with_seed(self, seed: int) -> "SamplingParams":
        return replace(self, seed=seed)

    def spec(self) -> SamplingSpec:
        """What an engine needs to pick a token (the step contract's part of these parameters)."""
        return SamplingSpec(temperature=float(self.temperature), top_k=self.top_k, top_p=float(self.top_p),
                            min_p=float(self.min_p), repetition_penalty=float(self.repetition_penalty),
                            logprobs=self.logprobs or self.top_logprobs > 0,
                            top_logprobs=max(self.top_logprobs, self.prompt_logprobs or 0))


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


def draw(seed: int, step: int) -> float:
    """Uniform in [0, 1) for token `step` of a request seeded with `seed`; identical everywhere."""
    h = hashlib.blake2b(struct.pack("<qQ", seed & 0x7FFFFFFFFFFFFFFF, step), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 11) / float(1 << 53)
