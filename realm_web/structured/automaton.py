"""Nodes (ast.py) -> a byte NFA -> a DFA built lazily, state by state.

The NFA is built in continuation-passing style: `build(node, next)` returns the state that
matches `node` then continues at `next`, memoized on (node, next), so a node shared by several
paths with the same continuation (the tails of a JSON object's optional properties) is built
once. Code points become their UTF-8 byte sequences, so every path spells valid UTF-8.

After building, states that cannot reach the accepting state are cut away: every state the DFA
can be in can still finish. That is what guarantees a constrained output can always be
completed (and, done, parses).

DFA states are sets of NFA states (after epsilon closure), numbered as they are first reached;
a state's transitions over the 256 byte values are computed the first time it is visited.
"""
from __future__ import annotations

from typing import Iterator

from .ast import Alt, Bytes, Cat, Cls, Join, Lit, Node, Ref, Rep, cat

MAX_STATES = 250_000
WIDE_CLASS = 16  # a class with this many ASCII characters is recorded in Nfa.wide
ROAD_LOOKAHEAD = 96  # states Dfa.run follows ahead at once (longer roads are taken in pieces)


class GrammarTooLarge(ValueError):
    """The automaton would be too large (a schema or pattern with huge repetitions)."""


def utf8_ranges(lo: int, hi: int) -> Iterator[list[tuple[int, int]]]:
    """Code points [lo, hi] (no surrogates) as byte-range sequences, each sequence matching the
    UTF-8 encodings of a sub-range."""
    if lo > hi:
        return
    for m in (0x7F, 0x7FF, 0xFFFF):
        if lo <= m < hi:
            yield from utf8_ranges(lo, m)
            yield from utf8_ranges(m + 1, hi)
            return
    if hi <= 0x7F:
        yield [(lo, hi)]
        return
    n = 2 if hi <= 0x7FF else 3 if hi <= 0xFFFF else 4
    for i in range(1, n):
        mask = (1 << (6 * i)) - 1
        if lo & ~mask != hi & ~mask:
            if lo & mask:
                yield from utf8_ranges(lo, lo | mask)
                yield from utf8_ranges((lo | mask) + 1, hi)
                return
            if hi & mask != mask:
                yield from utf8_ranges(lo, (hi & ~mask) - 1)
                yield from utf8_ranges(hi & ~mask, hi)
                return
    a, b = chr(lo).encode(), chr(hi).encode()
    yield list(zip(a, b))


class Nfa:
    """States 0..n-1; `edges[s]`: (lo, hi, target) byte ranges; `eps[s]`: epsilon targets."""

    def __init__(self) -> None:
        self.edges: list[list[tuple[int, int, int]]] = []
        self.eps: list[list[int]] = []
        self._memo: dict[tuple[int, int], int] = {}
        self._keep: list[Node] = []  # memo keys use id(): keep the nodes alive
        self._made: dict[int, Node] = {}  # Ref -> its node
        self._seq: dict[tuple[tuple[tuple[int, int], ...], int], int] = {}
        self.wide: set[int] = set()  # the ASCII bytes of each wide class built (vocab.Road candidates)
        self.accept = self.new()

    def new(self) -> int:
        if len(self.edges) >= MAX_STATES:
            raise GrammarTooLarge(f"the grammar needs more than {MAX_STATES} automaton states: "
                                  "lower its repetition counts or lengths")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def build(self, node: Node, nxt: int) -> int:
        key = (id(node), nxt)
        got = self._memo.get(key)
        if got is not None:
            return got
        self._keep.append(node)
        s = self._build(node, nxt)
        self._memo[key] = s
        return s

    def _fork(self, targets: list[int]) -> int:
        if len(targets) == 1:
            return targets[0]
        s = self.new()
        self.eps[s] = list(dict.fromkeys(targets))
        return s

    def _build(self, node: Node, nxt: int) -> int:
        if isinstance(node, Lit):
            s = nxt
            for b in reversed(node.text.encode("utf-8")):
                t = self.new()
                self.edges[t].append((b, b, s))
                s = t
            return s
        if isinstance(node, Cls):
            ascii_bytes = sum((1 << (min(hi, 127) + 1)) - (1 << lo) for lo, hi in node.ranges if lo <= 127)
            if ascii_bytes.bit_count() >= WIDE_CLASS:
                self.wide.add(ascii_bytes)
            starts = [self._sequence(tuple(seq), nxt) for lo, hi in node.ranges for seq in utf8_ranges(lo, hi)]
            if not starts:
                return self.new()  # matches nothing: a state with no way on
            return self._fork(starts)
        if isinstance(node, Cat):
            s = nxt
            for item in reversed(node.items):
                s = self.build(item, s)
            return s
        if isinstance(node, Alt):
            if not node.items:
                return self.new()
            return self._fork([self.build(x, nxt) for x in node.items])
        if isinstance(node, Rep):
            return self._repeat(node.item, node.min, node.max, nxt)
        if isinstance(node, Join):
            return self._join(node, nxt)
        if isinstance(node, Bytes):
            loop = self.new()
            self.edges[loop].append((0, 255, loop))
            self.eps[loop].append(nxt)
            return loop
        if isinstance(node, Ref):
            made = self._made.get(id(node))
            if made is None:
                made = self._made[id(node)] = node.make()
            return self.build(made, nxt)
        raise TypeError(f"not a grammar node: {node!r}")

    def _sequence(self, seq: tuple[tuple[int, int], ...], nxt: int) -> int:
        """Byte ranges in a row, sharing common suffixes (UTF-8 continuation bytes)."""
        if not seq:
            return nxt
        key = (seq, nxt)
        got = self._seq.get(key)
        if got is None:
            tail = self._sequence(seq[1:], nxt)
            got = self.new()
            self.edges[got].append((seq[0][0], seq[0][1], tail))
            self._seq[key] = got
        return got

    def _repeat(self, item: Node, lo: int, hi: int | None, nxt: int) -> int:
        if hi is None:
            loop = self.new()
            self.eps[loop] = [self.build(item, loop), nxt]
            s = loop
        else:
            s = nxt
            for _ in range(hi - lo):  # t_k = next | item t_(k-1)
                s = self._fork([self.build(item, s), nxt])
        for _ in range(lo):
            s = self.build(item, s)
        return s

    def _join(self, node: Join, nxt: int) -> int:
        item, sep, lo, hi = node.item, node.sep, node.min, node.max
        if hi is not None:
            if hi == 0:
                return nxt
            more = Rep(cat(sep, item), max(lo - 1, 0), hi - 1)
            self._keep.append(more)
            body = self.build(cat(item, more), nxt)
            return body if lo >= 1 else self._fork([body, nxt])
        j = self.new()
        first = self.build(item, j)
        self.eps[j] = [nxt, self.build(sep, first)]
        s = first
        for _ in range(lo - 1):
            s = self.build(item, self.build(sep, s))
        return s if lo >= 1 else self._fork([first, nxt])

    def prune(self) -> None:
        """Drop every transition into a state that cannot reach the accepting state."""
        n = len(self.edges)
        back: list[list[int]] = [[] for _ in range(n)]
        for s in range(n):
            for _, _, t in self.edges[s]:
                back[t].append(s)
            for t in self.eps[s]:
                back[t].append(s)
        alive = bytearray(n)
        alive[self.accept] = 1
        todo = [self.accept]
        while todo:
            for p in back[todo.pop()]:
                if not alive[p]:
                    alive[p] = 1
                    todo.append(p)
        for s in range(n):
            self.edges[s] = [e for e in self.edges[s] if alive[e[2]]]
            self.eps[s] = [t for t in self.eps[s] if alive[t]]
        self.alive = alive
        self._memo.clear()
        self._seq.clear()
        self._keep.clear()
        self._made.clear()


class Dfa:
    """The lazily determinized automaton of an NFA built from `node`. State 0 is the start;
    -1 is dead (never entered: `row` gives -1 for bytes that lead nowhere)."""

    def __init__(self, node: Node) -> None:
        nfa = Nfa()
        start = nfa.build(node, nfa.accept)
        nfa.prune()
        self.nfa = nfa
        self.sets: list[frozenset[int]] = []
        self.index: dict[frozenset[int], int] = {}
        self.accepting: list[bool] = []
        self.rows: list[list[int] | None] = []
        self._loops: dict[int, int] = {}
        self._runs: dict[int, tuple[int, int, int]] = {}
        self._allowed: dict[int, int] = {}
        self._groups: dict[int, dict[int, int]] = {}
        self.lookahead = ROAD_LOOKAHEAD  # at least the longest token (structured.Grammar sets it)
        self.empty = not nfa.alive[start]
        if not self.empty:
            self._state(self._closure([start]))

    def _closure(self, states: list[int]) -> frozenset[int]:
        eps, edges, seen = self.nfa.eps, self.nfa.edges, set(states)
        todo = list(states)
        while todo:
            for t in eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        acc = self.nfa.accept
        return frozenset(s for s in seen if edges[s] or s == acc)

    def _state(self, key: frozenset[int]) -> int:
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.sets)
            self.sets.append(key)
            self.accepting.append(self.nfa.accept in key)
            self.rows.append(None)
            if len(self.sets) > MAX_STATES:
                raise GrammarTooLarge(f"the grammar reached more than {MAX_STATES} states")
        return i

    def row(self, d: int) -> list[int]:
        """State d's next state for each byte value (-1: no way on)."""
        r = self.rows[d]
        if r is not None:
            return r
        edges = [e for s in self.sets[d] for e in self.nfa.edges[s]]
        r = [-1] * 256
        groups: dict[int, int] = {}
        cuts = sorted({0, 256} | {lo for lo, _, _ in edges} | {hi + 1 for _, hi, _ in edges})
        for a, b in zip(cuts, cuts[1:]):
            targets = sorted({t for lo, hi, t in edges if lo <= a <= hi})
            if targets:
                nxt = self._state(self._closure(targets))
                r[a:b] = [nxt] * (b - a)
                groups[nxt] = groups.get(nxt, 0) | ((1 << b) - (1 << a))
        self.rows[d] = r
        self._groups[d] = groups
        return r

    def groups(self, d: int) -> dict[int, int]:
        """State d's next states, each with the bytes that lead there (a 256-bit set)."""
        g = self._groups.get(d)
        if g is None:
            self.row(d)
            g = self._groups[d]
        return g

    def allowed(self, d: int) -> int:
        """The bytes that lead somewhere from d, as a 256-bit set."""
        m = self._allowed.get(d)
        if m is None:
            m = self._allowed[d] = sum(self.groups(d).values())
        return m

    def loop(self, d: int) -> int:
        """The bytes that keep state d where it is, as a 256-bit set."""
        m = self._loops.get(d)
        if m is None:
            m = self._loops[d] = self.groups(d).get(d, 0)
        return m

    def run(self, d: int) -> tuple[int, int, int]:
        """State d's main road: (bytes, steps, then). `bytes` is the largest set of bytes that
        all lead from d to one same state; following them, every state for `steps` bytes has that
        same set (-1: forever, a loop), and after them the road is at state `then`. A bounded
        repetition (`[a-z]{1,32}`, a string's maxLength) is one road of that many steps."""
        got = self._runs.get(d)
        if got is not None:
            return got
        path: list[tuple[int, int, int]] = []  # (state, its set, its next state), not filled in yet
        on_path: dict[int, int] = {}
        s = d
        while s not in self._runs and s not in on_path and len(path) < self.lookahead:
            groups = self.groups(s)
            if not groups:
                self._runs[s] = (0, 0, s)
                break
            t, m = max(groups.items(), key=lambda g: (g[1].bit_count(), -g[0]))
            on_path[s] = len(path)
            path.append((s, m, t))
            s = t
        for s, m, t in reversed(path):  # backwards: a state extends its next state's road
            nxt = self._runs.get(t)
            if nxt is None and t in on_path:  # the path closes a cycle here
                if all(p[1] == m for p in path[on_path[t]:]):
                    self._runs[s] = (m, -1, s)
                    continue
            if nxt is not None and nxt[0] == m and nxt[1] != 0:
                self._runs[s] = (m, -1 if nxt[1] < 0 else nxt[1] + 1, nxt[2])
            else:
                self._runs[s] = (m, 1, t)
        return self._runs[d]

    def takes_all(self, d: int, byteset: int, depth: int) -> bool:
        """Every string of at most `depth` bytes drawn from `byteset` leads somewhere from d (a
        trie subtree that d allows whole)."""
        while depth > 0:
            m, steps, then = self.run(d)
            if byteset & ~m:
                return False
            if steps < 0 or steps >= depth:
                return True
            if steps == 0:
                return False
            depth -= steps
            d = then
        return True

    def walk(self, d: int, data: bytes) -> int:
        """The state after `data` from d (-1 if it leads nowhere)."""
        for b in data:
            d = self.row(d)[b]
            if d < 0:
                return -1
        return d

    def universal(self, d: int) -> bool:
        """From d every byte sequence is accepted: nothing is constrained any more."""
        return self.accepting[d] and self.loop(d) == (1 << 256) - 1

    def final(self, d: int) -> bool:
        """d accepts and no byte leads on: the output is complete."""
        return self.accepting[d] and all(t < 0 for t in self.row(d))

    def shortest_end(self, d: int) -> bytes:
        """The shortest bytes from d to an accepting state (breadth first)."""
        prev: dict[int, tuple[int, int] | None] = {d: None}
        todo, i = [d], 0
        while not self.accepting[todo[i]]:
            s = todo[i]
            i += 1
            for b, t in enumerate(self.row(s)):
                if t >= 0 and t not in prev:
                    prev[t] = (s, b)
                    todo.append(t)
        out, s = bytearray(), todo[i]
        while (step := prev[s]) is not None:
            s, b = step
            out.append(b)
        return bytes(reversed(out))
