"""Incremental detokenization and stop strings: text deltas that never split a UTF-8 character."""
from __future__ import annotations

import codecs
from typing import Protocol, Sequence


class _TokenBytes(Protocol):
    special_ids: frozenset[int]

    def token_bytes(self, token_id: int) -> bytes: ...


class IncrementalDetokenizer:
    """Turns token ids into text deltas. Bytes of an unfinished character are held back until the
    character completes; invalid sequences become U+FFFD, as `bytes.decode(errors="replace")` does."""

    def __init__(self, tokenizer: _TokenBytes, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_ids: Sequence[int]) -> str:
        data = b"".join(self._tok.token_bytes(t) for t in token_ids
                        if not (self._skip and t in self._tok.special_ids))
        return self._dec.decode(data)

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


class StopStrings:
    """Finds stop strings across deltas and holds back text that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was hit). After a hit, nothing more is emitted."""
        if not self._stops:
            return delta, False
        buf = self._pending + delta
        hit = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if hit >= 0:
            self._pending = ""
            return buf[:hit], True
        keep = 0
        for s in self._stops:  # the longest suffix of buf that is a proper prefix of a stop string
            for n in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:n]):
                    keep = n
                    break
        self._pending = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out
