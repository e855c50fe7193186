"""The vocabulary as a byte trie, and the token mask of a DFA state.

A state's mask is found by walking the trie and the DFA together: a branch is followed while
the DFA has a way on, so only the tokens a state could take are visited. Each trie node knows
the set of bytes in its subtree and its depth, and when the DFA takes every string of those
bytes up to that depth (a string body loops on every ordinary character; a bounded one,
maxLength, runs down a road of that many states: automaton.Dfa.run), the whole subtree is
allowed at once, as one range of the trie's token order.

Inside a string almost every token is allowed, and even that walk visits thousands of nodes
(every token with a quote, a newline or a non-ASCII byte somewhere). So a state on a road of a
wide byte set m (Dfa.run: every byte of m leads on along the road, for R bytes) is done by
splitting the vocabulary once per m (`Road`, kept on the vocabulary, shared by every grammar):
the tokens made only of m's bytes are allowed if they fit in R (one precomputed mask per R),
and every other token leaves the road at its first byte outside m, after j bytes: the trie is
walked on from that node only (from the road's j-th state), and only for the bytes that state
allows. Only those few tokens are walked per state.

Masks are per DFA state and kept on the grammar (structured/__init__.py), so a request pays
for a state the first time any request reaches it; after that a step's mask is a lookup.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from itertools import repeat
from operator import itemgetter
from typing import Callable, Protocol, Sequence

from .automaton import WIDE_CLASS, Dfa

ROAD_MIN_BYTES = WIDE_CLASS  # a road this wide or wider is masked by splitting (narrower ones: walk)
ROADS_KEPT = 8
GATHER_ABOVE = 12_000  # tokens allowed beyond which one C-level gather beats marking them one by one


class _Tok(Protocol):
    special_ids: frozenset[int]

    def token_bytes(self, token_id: int) -> bytes: ...


class Trie:
    """Token ids under their bytes (`items`: (id, bytes) pairs, bytes non-empty)."""

    def __init__(self, items: Sequence[tuple[int, bytes]]) -> None:
        kids: list[list[tuple[int, int]]] = [[]]
        ends: list[list[int]] = [[]]
        index: list[dict[int, int]] = [{}]
        for tid, b in items:
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
        self.depth = [0] * n  # the longest path below the node, in bytes
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
                m, h = 0, 0
                for c, child in kids[node]:
                    m |= (1 << c) | self.below[child]
                    h = max(h, 1 + self.depth[child])
                self.below[node], self.depth[node] = m, h
        self.kids, self.ends, self.index = kids, ends, index
        self.order = order

    def node(self, data: bytes) -> int:
        """The node spelled by `data` (which must be a beginning of some token)."""
        node, index = 0, self.index
        for c in data:
            node = index[node][c]
        return node

    def ranges(self, dfa: Dfa, todo: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The ranges of `order` positions taken, from each (node, state) in `todo`: the node
        reached (its byte read), the state it left the DFA in."""
        got: list[tuple[int, int]] = []
        kids, ends, first, stop, below, depth = self.kids, self.ends, self.first, self.stop, self.below, self.depth
        takes_all = dfa.takes_all
        todo = list(todo)
        while todo:
            node, s = todo.pop()
            if depth[node] and takes_all(s, below[node], depth[node]):  # the whole subtree
                got.append((first[node], stop[node]))
                continue
            k = len(ends[node])
            if k:
                got.append((first[node], first[node] + k))
            if kids[node]:
                row = dfa.row(s)
                for c, child in kids[node]:
                    t = row[c]
                    if t >= 0:
                        todo.append((child, t))
        return got

class Road:
    """The vocabulary split by one byte set m: the tokens spelled with m's bytes only, by
    length, and the trie nodes where the others leave m (`exits[j][c]`: the nodes reached by a
    byte c outside m after j bytes inside it; `exit_bytes[j]`: those c, a 256-bit set)."""

    def __init__(self, m: int, trie: Trie, tokens: Sequence[tuple[int, bytes]], size: int) -> None:
        inside = bytes(m >> b & 1 for b in range(256))
        ids = [tid for tid, _ in tokens]
        spelled = [b for _, b in tokens]
        leave = list(map(bytes.find, map(bytes.translate, spelled, repeat(inside)), repeat(0)))  # first byte outside m
        pure = [(len(b), tid) for tid, b, j in zip(ids, spelled, leave) if j < 0]
        exits: dict[int, dict[int, list[int]]] = {}
        for p in {b[: j + 1] for b, j in zip(spelled, leave) if j >= 0}:  # each exit node once
            exits.setdefault(len(p) - 1, {}).setdefault(p[-1], []).append(trie.node(p))
        pure.sort()
        self.size = size
        self.lengths = [n for n, _ in pure]
        self.pure = [tid for _, tid in pure]
        self.exits = dict(sorted(exits.items()))
        self.exit_bytes = {j: sum(1 << c for c in e) for j, e in self.exits.items()}
        self._fits: list[bytes] = []

    def fits(self, r: int) -> bytes:
        """One byte per token id: 1 for the tokens of m's bytes only, at most r of them."""
        fits = self._fits
        while len(fits) <= r:  # made in order, each from the one before
            k = len(fits)
            mask = bytearray(fits[-1]) if fits else bytearray(self.size)
            for i in range(bisect_left(self.lengths, k), bisect_right(self.lengths, k)):
                mask[self.pure[i]] = 1
            fits.append(bytes(mask))
        return fits[r]


class Vocabulary:
    """The tokens a constrained output is spelled with: every token with bytes, less the special
    ones; `size` is the model's vocabulary (mask length), `eos` the ids that end an output."""

    def __init__(self, token_bytes: Sequence[bytes], special: frozenset[int], size: int,
                 eos: Sequence[int]) -> None:
        self.size = size
        self.eos = tuple(t for t in eos if 0 <= t < size)
        self.token_bytes = list(token_bytes)
        self.tokens = [(tid, b) for tid, b in enumerate(self.token_bytes[:size]) if b and tid not in special]
        self.trie = Trie(self.tokens)
        self.longest = max((len(b) for _, b in self.tokens), default=0)
        where = [len(self.trie.order)] * size  # position of each token id in the trie's order (sentinel: none)
        for pos, tid in enumerate(self.trie.order):
            where[tid] = pos
        self._gather: Callable[[bytearray], tuple[int, ...]] = itemgetter(*where)
        self._roads: OrderedDict[int, Road] = OrderedDict()

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
        index, ends = self.trie.index, self.trie.ends
        for c in data:
            nxt = index[node].get(c)
            if nxt is None:
                break
            node = nxt
            out += ends[node]
        return out

    def road(self, m: int) -> Road:
        """The vocabulary split by byte set m (made once, kept for the last ROADS_KEPT sets)."""
        r = self._roads.get(m)
        if r is None:
            r = self._roads[m] = Road(m, self.trie, self.tokens, self.size)
            while len(self._roads) > ROADS_KEPT:
                self._roads.popitem(last=False)
        else:
            self._roads.move_to_end(m)
        return r

    def mask(self, dfa: Dfa, d: int) -> bytes:
        """One byte per token id: 1 where state d may take the token (an end-of-sequence id
        when d accepts)."""
        out = self._road_mask(dfa, d)
        if out is None:
            row = dfa.row(d)
            got = self.trie.ranges(dfa, [(child, row[c]) for c, child in self.trie.kids[0] if row[c] >= 0])
            if sum(b - a for a, b in got) > GATHER_ABOVE:  # many tokens: mark in trie order, gather once
                dfs = bytearray(len(self.trie.order) + 1)
                ones = b"\x01" * len(self.trie.order)
                for a, b in got:
                    dfs[a:b] = ones[: b - a]
                out = bytearray(self._gather(dfs))
            else:
                out = self._mark(bytearray(self.size), got)
        if dfa.accepting[d]:
            for e in self.eos:
                out[e] = 1
        return bytes(out)

    def _road_mask(self, dfa: Dfa, d: int) -> bytearray | None:
        """The mask of d by splitting on its road (module docstring), or None where d has no
        wide road or the road's end could go on with the road's own bytes."""
        m, steps, then = dfa.run(d)
        if steps == 0 or m.bit_count() < ROAD_MIN_BYTES:
            return None
        long = self.longest
        r = long if steps < 0 or steps >= long else steps
        if r < long and dfa.allowed(then) & m:
            return None  # a token of m's bytes longer than the road might go on past its end
        road = self.road(m)
        out = bytearray(road.fits(r))
        step = (m & -m).bit_length() - 1  # any byte of m: they all lead along the road
        todo: list[tuple[int, int]] = []
        s, at = d, 0
        for j, exits in road.exits.items():
            if j > r:
                break
            while at < j:
                s = dfa.row(s)[step]
                at += 1
            ok = road.exit_bytes[j] & dfa.allowed(s)
            if ok:
                row = dfa.row(s)
                for c, nodes in exits.items():
                    if ok >> c & 1:
                        t = row[c]
                        todo += ((n, t) for n in nodes)
        return self._mark(out, self.trie.ranges(dfa, todo))

    def _mark(self, out: bytearray, ranges: list[tuple[int, int]]) -> bytearray:
        """`out` with the tokens at the trie-order positions of `ranges` set to 1."""
        order = self.trie.order
        for a, b in ranges:
            for tid in order[a:b]:
                out[tid] = 1
        return out
