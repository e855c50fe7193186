"""The vocabulary as a byte trie, and the token mask of a DFA state.

A state's mask is found by walking the trie and the DFA together: a branch is followed while
the DFA has a way on, so only the tokens a state could take are visited. Two shortcuts keep it
cheap inside strings, where almost every token is allowed: each trie node knows the set of
bytes in its subtree, and when the DFA loops on all of them (a string body loops on every
ordinary character), the whole subtree is allowed at once, as one range of the trie's token
order. The mask is built in that order with slice assignments and turned into token-id order
with one C-level gather.

Masks are per DFA state and kept on the grammar (structured/__init__.py), so a request pays
for a state the first time any request reaches it; after that a step's mask is a lookup.
"""
from __future__ import annotations

from operator import itemgetter
from typing import Callable, Protocol, Sequence

from .automaton import Dfa


class _Tok(Protocol):
    special_ids: frozenset[int]

    def token_bytes(self, token_id: int) -> bytes: ...


class Vocabulary:
    """The tokens a constrained output is spelled with: every token with bytes, less the special
    ones; `size` is the model's vocabulary (mask length), `eos` the ids that end an output."""

    def __init__(self, token_bytes: Sequence[bytes], special: frozenset[int], size: int,
                 eos: Sequence[int]) -> None:
        self.size = size
        self.eos = tuple(t for t in eos if 0 <= t < size)
        self.token_bytes = list(token_bytes)
        kids: list[list[tuple[int, int]]] = [[]]
        ends: list[list[int]] = [[]]
        index: list[dict[int, int]] = [{}]
        for tid, b in enumerate(self.token_bytes):
            if not b or tid in special or tid >= size:
                continue
            node = 0
            for c in b:
                nxt = index[node].get(c)
                if nxt is None:
                    nxt = len(kids)
                    index[node][c] = nxt
                    kids[node].append((c, nxt))
                    kids.append([])
                    ends.append([])
                    index.append({})
                node = nxt
            ends[node].append(tid)
        for k in kids:
            k.sort()
        n = len(kids)
        # pre-order token positions: a node's own tokens, then its children's subtrees by byte
        self.first = [0] * n  # position of the node's first own token
        self.stop = [0] * n  # one past the subtree's last position
        self.below = [0] * n  # bytes on the edges below the node (a 256-bit set)
        order: list[int] = []
        stack: list[tuple[int, int]] = [(0, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                self.first[node] = len(order)
                order += ends[node]
            if i < len(kids[node]):
                stack.append((node, i + 1))
                stack.append((kids[node][i][1], 0))
            else:
                self.stop[node] = len(order)
                m = 0
                for c, child in kids[node]:
                    m |= (1 << c) | self.below[child]
                self.below[node] = m
        self.kids, self.ends = kids, ends
        self.order = order
        where = [len(order)] * size  # position of each token id in `order` (the sentinel: not a token)
        for pos, tid in enumerate(order):
            where[tid] = pos
        self._gather: Callable[[bytearray], tuple[int, ...]] = itemgetter(*where)

    @classmethod
    def of(cls, tokenizer: _Tok, size: int, eos: Sequence[int]) -> "Vocabulary":
        n = size
        raw = []
        for t in range(n):
            try:
                raw.append(tokenizer.token_bytes(t))
            except (IndexError, KeyError, ValueError):
                raw.append(b"")
        return cls(raw, tokenizer.special_ids, size, eos)

    def prefixes(self, data: bytes) -> list[int]:
        """The tokens whose bytes are a non-empty beginning of `data`."""
        out: list[int] = []
        node = 0
        for c in data:
            nxt = next((child for b, child in self.kids[node] if b == c), None)
            if nxt is None:
                break
            node = nxt
            out += self.ends[node]
        return out

    def mask(self, dfa: Dfa, d: int) -> bytes:
        """One byte per token id: 1 where state d may take the token (an end-of-sequence id
        when d accepts)."""
        dfs = bytearray(len(self.order) + 1)
        ones = b"\x01" * len(self.order)
        kids, ends, first, stop, below = self.kids, self.ends, self.first, self.stop, self.below
        todo = [(0, d)]
        while todo:
            node, s = todo.pop()
            row = dfa.row(s)
            loop = dfa.loop(s)
            for c, child in kids[node]:
                t = row[c]
                if t < 0:
                    continue
                if t == s and not below[child] & ~loop:  # the whole subtree stays in s: all allowed
                    dfs[first[child]:stop[child]] = ones[: stop[child] - first[child]]
                    continue
                k = len(ends[child])
                if k:
                    dfs[first[child]:first[child] + k] = ones[:k]
                if kids[child]:
                    todo.append((child, t))
        out = bytearray(self._gather(dfs))
        if dfa.accepting[d]:
            for e in self.eos:
                out[e] = 1
        return bytes(out)
