"""OpenAI's logprobs objects, built from what the core returns (pure functions, no I/O).

Completions (`logprobs: N`): `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, one
entry per token; with `echo` the prompt's tokens come first, the first of them without a logprob
(null). `top_logprobs[i]` maps the N most likely tokens' texts, and the chosen one's, to their
logprobs (so it may hold N + 1). `text_offset[i]` is where token i's text starts in the choice's
text, in characters (a token that starts inside a character points at that character).

Chat (`logprobs: true`, `top_logprobs: N`): `{"content": [{"token", "logprob", "bytes",
"top_logprobs": [{"token", "logprob", "bytes"}, ...]}]}`.

Every value is the log-softmax of the model's raw logits (realm_web.step.SamplingSpec).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

TokenBytes = Callable[[Sequence[int]], list[bytes]]
Top = Sequence[tuple[int, float]]


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


class ChoiceLogprobs:
    """One choice's logprobs, part by part as its tokens come (a stream's chunks, or the whole
    at once). It keeps the character offset of the choice's text so far."""

    def __init__(self, chat: bool, top_n: int, token_bytes: TokenBytes) -> None:
        self.chat, self.top_n, self.token_bytes = chat, top_n, token_bytes
        self.chars = 0  # characters of the choice's text before the next token (completions)

    def part(self, ids: Sequence[int], lps: Sequence[float | None], tops: Sequence[Top | None] | None) -> dict[str, Any]:
        """The logprobs object for tokens `ids` (a None logprob: the prompt's first token)."""
        raw = self.token_bytes(ids)
        if self.chat:
            return {"content": [self._chat_entry(i, b, lp, tops[j] if tops else None)
                                for j, (i, b, lp) in enumerate(zip(ids, raw, lps))]}
        tokens: list[str] = []
        offsets: list[int] = []
        top_dicts: list[dict[str, float] | None] = []
        for j, (tid, b, lp) in enumerate(zip(ids, raw, lps)):
            tokens.append(_text(b))
            lead = sum(1 for c in b if c & 0xC0 != 0x80)  # characters this token starts
            offsets.append(self.chars - (1 if b and b[0] & 0xC0 == 0x80 and self.chars else 0))
            self.chars += lead
            if lp is None:
                top_dicts.append(None)
                continue
            tj = tops[j] if tops else None
            top = list(tj) if tj is not None else []
            d = {_text(tb): v for (_, v), tb in zip(top[: self.top_n], self.token_bytes([t for t, _ in top[: self.top_n]]))}
            d.setdefault(_text(b), lp)  # the chosen token's, always
            top_dicts.append(d)
        return {"tokens": tokens, "token_logprobs": list(lps), "top_logprobs": top_dicts, "text_offset": offsets}

    def _chat_entry(self, tid: int, b: bytes, lp: float | None, top: Top | None) -> dict[str, Any]:
        alts = list(top or [])[: self.top_n]
        alt_bytes = self.token_bytes([t for t, _ in alts])
        return {"token": _text(b), "logprob": lp, "bytes": list(b),
                "top_logprobs": [{"token": _text(ab), "logprob": v, "bytes": list(ab)} for (_, v), ab in zip(alts, alt_bytes)]}


def merge(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two consecutive parts of one choice's logprobs as one."""
    if a is None or b is None:
        return a or b
    return {k: a[k] + b[k] for k in a}
