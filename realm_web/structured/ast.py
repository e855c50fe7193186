"""The regular-language nodes structured outputs compile to, and a regex parser.

Nodes are over Unicode code points (`Lit`, `Cls`) and are turned into a byte automaton by
automaton.py (UTF-8). `Bytes` matches raw bytes (free text). `Join` is a separated list built
without copying its item (`[a, b, c]`). `Ref` defers a node (JSON schema `$ref` recursion,
unrolled to a bounded depth). Nodes are immutable and may be shared: automaton.py compiles a
shared node once per continuation.

`parse_regex` reads the common regex syntax (Python / ECMAScript): literals and escapes, `.`,
classes with ranges and negation, `\\d \\w \\s` (ASCII classes, as Python's re.ASCII) and their negations, groups (capturing, `(?:`,
named), alternation, `* + ? {m} {m,} {m,n}` (lazy and possessive forms match the same
strings), `^` at the start and `$` at the end. A pattern always matches the whole text.
Anything else (backreferences, lookaround, word boundaries, inline flags) is a RegexError
naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MAX_CP = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)


class RegexError(ValueError):
    """A pattern this parser does not take, with where and why."""


class Node:
    __slots__ = ()


@dataclass(frozen=True, eq=False)
class Lit(Node):
    text: str


@dataclass(frozen=True, eq=False)
class Cls(Node):
    """A set of code points: sorted, disjoint, inclusive (lo, hi) ranges (no surrogates)."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, eq=False)
class Cat(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class Alt(Node):
    items: tuple[Node, ...]  # empty: matches nothing


@dataclass(frozen=True, eq=False)
class Rep(Node):
    item: Node
    min: int
    max: int | None  # None: unbounded


@dataclass(frozen=True, eq=False)
class Join(Node):
    """`min`..`max` items separated by `sep` (max None: unbounded)."""

    item: Node
    sep: Node
    min: int
    max: int | None


@dataclass(frozen=True, eq=False)
class Bytes(Node):
    """Any sequence of bytes (free text: the automaton leaves the request unconstrained)."""


@dataclass(frozen=True, eq=False)
class Ref(Node):
    """A node made on demand (a schema `$ref`); `make` returns the node it stands for."""

    key: str
    make: Callable[[], Node]


NOTHING = Alt(())
EMPTY = Cat(())


def cat(*items: Node) -> Node:
    flat: list[Node] = []
    for x in items:
        flat.extend(x.items if isinstance(x, Cat) else (x,))
    return flat[0] if len(flat) == 1 else Cat(tuple(flat))


def alt(*items: Node) -> Node:
    flat: list[Node] = []
    for x in items:
        flat.extend(x.items if isinstance(x, Alt) else (x,))
    return flat[0] if len(flat) == 1 else Alt(tuple(flat))


def opt(x: Node) -> Node:
    return Rep(x, 0, 1)


def cls(*ranges: tuple[int, int]) -> Cls:
    return Cls(normalize(ranges))


def chars(s: str) -> Cls:
    return cls(*((ord(c), ord(c)) for c in s))


def normalize(ranges: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, merged ranges with the surrogates cut out."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    cut: list[tuple[int, int]] = []
    for lo, hi in out:
        if hi < SURROGATES[0] or lo > SURROGATES[1]:
            cut.append((lo, hi))
            continue
        if lo < SURROGATES[0]:
            cut.append((lo, SURROGATES[0] - 1))
        if hi > SURROGATES[1]:
            cut.append((SURROGATES[1] + 1, hi))
    return tuple(cut)


def negate(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    out, nxt = [], 0
    for lo, hi in normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CP:
        out.append((nxt, MAX_CP))
    return normalize(out)


DIGIT = ((0x30, 0x39),)
WORD = normalize([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
SPACE = normalize([(0x09, 0x0D), (0x20, 0x20)])
ANY_BUT_NEWLINE = negate(((0x0A, 0x0A),))
_CLASSES = {"d": DIGIT, "w": WORD, "s": SPACE}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0", "a": "\a", "e": "\x1b"}
MAX_REPEAT = 1000


def parse_regex(pattern: str) -> Node:
    """A regex -> a node matching exactly the strings the pattern fully matches (see the module doc)."""
    if not isinstance(pattern, str):
        raise RegexError("a pattern must be a string")
    p = _Parser(pattern)
    node = p.alternation()
    if p.i < len(pattern):
        raise RegexError(f"unbalanced ')' at {p.i} in pattern {pattern!r}")
    return node


class _Parser:
    def __init__(self, s: str) -> None:
        self.s, self.i = s, 0

    def fail(self, what: str) -> RegexError:
        return RegexError(f"{what} at {self.i} in pattern {self.s!r}")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def alternation(self) -> Node:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        return alt(*branches) if len(branches) > 1 else branches[0]

    def sequence(self) -> Node:
        items: list[Node] = []
        while self.i < len(self.s) and self.peek() not in "|)":
            c = self.peek()
            if c == "^":
                if items:
                    raise self.fail("'^' inside a pattern is not supported (only at its start)")
                self.i += 1
                continue
            if c == "$":
                self.i += 1
                if self.i < len(self.s) and self.peek() not in "|)":
                    raise self.fail("'$' inside a pattern is not supported (only at its end)")
                continue
            items.append(self.quantified(self.atom()))
        return cat(*items) if items else EMPTY

    def atom(self) -> Node:
        c = self.peek()
        self.i += 1
        if c == "(":
            if self.s.startswith("?:", self.i):
                self.i += 2
            elif self.s.startswith("?P<", self.i) or (self.s.startswith("?<", self.i) and self.s[self.i + 2: self.i + 3] not in ("=", "!")):
                end = self.s.find(">", self.i)
                if end < 0:
                    raise self.fail("unterminated group name")
                self.i = end + 1
            elif self.peek() == "?":
                raise self.fail("lookaround, inline flags and other '(?' groups are not supported")
            node = self.alternation()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.i += 1
            return node
        if c == "[":
            return self.char_class()
        if c == ".":
            return Cls(ANY_BUT_NEWLINE)
        if c == "\\":
            return self.escape(in_class=False)
        if c in "*+?":
            raise self.fail(f"nothing to repeat before '{c}'")
        if c == "{" and self._quantifier_ahead(self.i - 1):
            raise self.fail("nothing to repeat before '{'")
        return Lit(c)

    def _quantifier_ahead(self, at: int) -> bool:
        j = self.s.find("}", at)
        body = self.s[at + 1: j] if j > 0 else ""
        return bool(body) and all(ch.isdigit() or ch == "," for ch in body) and body[0] != ","

    def quantified(self, node: Node) -> Node:
        while True:
            c = self.peek()
            if c in ("*", "+", "?"):
                self.i += 1
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            elif c == "{" and self._quantifier_ahead(self.i):
                j = self.s.index("}", self.i)
                body = self.s[self.i + 1: j]
                self.i = j + 1
                a, _, b = body.partition(",")
                lo = int(a)
                hi = lo if "," not in body else (int(b) if b else None)
                if hi is not None and hi < lo:
                    raise self.fail(f"bad repetition {{{body}}}")
                if max(lo, hi or 0) > MAX_REPEAT:
                    raise self.fail(f"repetition counts above {MAX_REPEAT} are not supported")
            else:
                return node
            if self.peek() in ("?", "+"):  # lazy / possessive: the same strings
                self.i += 1
            node = Rep(node, lo, hi)

    def escape(self, in_class: bool) -> Node:
        c = self.peek()
        if not c:
            raise self.fail("a pattern cannot end with '\\'")
        self.i += 1
        if c.lower() in _CLASSES:
            r = _CLASSES[c.lower()]
            return Cls(negate(r) if c.isupper() else r)
        if c in _ESCAPES:
            return Lit(_ESCAPES[c])
        if c == "b" and in_class:
            return Lit("\b")
        if c in "xu":
            n = 2 if c == "x" else 4
            if c == "u" and self.peek() == "{":
                j = self.s.find("}", self.i)
                digits, self.i = self.s[self.i + 1: j], j + 1
            else:
                digits = self.s[self.i: self.i + n]
                self.i += n
            try:
                cp = int(digits, 16)
            except ValueError:
                raise self.fail(f"bad \\{c} escape") from None
            if SURROGATES[0] <= cp <= SURROGATES[1] or cp > MAX_CP:
                raise self.fail("surrogate or out-of-range code point")
            return Lit(chr(cp))
        if c.isalnum():
            raise self.fail(f"'\\{c}' (backreferences, word boundaries, anchors, classes) is not supported")
        return Lit(c)

    def char_class(self) -> Node:
        neg = self.peek() == "^"
        if neg:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.peek()
            if not c:
                raise self.fail("unterminated character class")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            lo = self._class_item()
            if isinstance(lo, tuple):
                ranges.extend(lo[0])
                continue
            if self.peek() == "-" and self.s[self.i + 1: self.i + 2] not in ("]", ""):
                self.i += 1
                hi = self._class_item()
                if isinstance(hi, tuple):
                    raise self.fail("a class like \\d cannot end a range")
                if hi < lo:
                    raise self.fail("bad character range")
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        r = normalize(ranges)
        return Cls(negate(r) if neg else r)

    def _class_item(self) -> int | tuple[tuple[tuple[int, int], ...]]:
        c = self.peek()
        self.i += 1
        if c == "[" and self.peek() == ":":
            raise self.fail("POSIX classes like [:alpha:] are not supported")
        if c != "\\":
            return ord(c)
        node = self.escape(in_class=True)
        if isinstance(node, Cls):
            return (node.ranges,)
        assert isinstance(node, Lit)
        return ord(node.text)
