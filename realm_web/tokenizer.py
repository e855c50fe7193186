"""Pure-Python BPE tokenizer reading Hugging Face ``tokenizer.json`` files.

Standard library only, so it runs unchanged in CPython and in Pyodide.  It reproduces the
ids of the Hugging Face ``tokenizers`` library (Rust) for BPE models:

* added tokens are matched first (leftmost-longest; ``lstrip``/``rstrip``/``single_word``;
  ``normalized=False`` ones on the raw text, ``normalized=True`` ones after normalization);
* normalizers: NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Replace, Prepend,
  ByteLevel, Sequence;
* pre-tokenizers: ByteLevel, Split, Digits, Metaspace, Whitespace, WhitespaceSplit,
  Punctuation, CharDelimiterSplit, BertPreTokenizer, FixedLength, Sequence;
* model: BPE (``ignore_merges``, ``unk_token``, ``fuse_unk``, ``byte_fallback``,
  ``continuing_subword_prefix``, ``end_of_word_suffix``), merged exactly like tokenizers
  (lowest rank first, leftmost on ties);
* post-processors: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence;
* decoders: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, BPEDecoder, WordPiece,
  CTC, Sequence.

Regex patterns are written for Oniguruma (what ``tokenizers`` runs them with).  They are
translated to Python ``re`` patterns: ``\\p{..}``, ``\\s``, ``\\d``, ``\\w``, POSIX brackets and
character-class set operations become explicit code point ranges from the fixed tables in
``_unicode_tables`` (Unicode 16.0, like the Oniguruma inside ``tokenizers``), so results do
not depend on the interpreter's own Unicode version.  Match iteration follows Oniguruma's
rules for empty matches.

Known differences from ``tokenizers``:

* NFC/NFD/NFKC/NFKD use the interpreter's ``unicodedata`` (CPython 3.11: Unicode 14.0,
  Pyodide 3.14: 16.0) while ``tokenizers`` uses an older normalization crate (about Unicode
  12), so text with characters given decompositions / combining classes after Unicode 12
  (e.g. U+1AC0..U+1ACE) can normalize differently.  Lowercase, StripAccents, punctuation
  and digit tests use fixed tables taken from ``tokenizers`` itself, so they are exact.
* ``(?i)`` in a regex uses Python's simple case folding; Oniguruma also applies Unicode
  multi-character folds (e.g. ``(?i)[a-z]`` matches U+0130 there).  Real tokenizer patterns
  only use ``(?i)`` on ASCII contractions, where both agree.
* ``\\p{Script}`` properties, ``\\G``, ``\\K``, ``\\R``, ``\\X`` raise ``ValueError``; so do
  WordPiece / Unigram / WordLevel models and the Precompiled / BertNormalizer / Nmt
  normalizers.  ``truncation`` / ``padding`` settings are not applied, BPE dropout is ignored.
* Text containing lone surrogates cannot be encoded (``tokenizers`` rejects it too).
"""
from __future__ import annotations

import heapq
import json
import os
import re
import unicodedata
from functools import lru_cache
from typing import Any, Callable, Sequence

from . import _unicode_tables as _ut

__all__ = ["Tokenizer", "load_tokenizer"]

_Ranges = tuple[tuple[int, int], ...]
_MAX_CP = 0x10FFFF

# ---------------------------------------------------------------------------------------
# Code point sets
# ---------------------------------------------------------------------------------------


def _parse_ranges(spec: str) -> _Ranges:
    out: list[tuple[int, int]] = []
    if not spec:
        return ()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        a = int(lo, 16)
        out.append((a, int(hi, 16) if hi else a))
    return tuple(out)


def _normalize_ranges(ranges: list[tuple[int, int]]) -> _Ranges:
    if not ranges:
        return ()
    ranges = sorted(ranges)
    out = [list(ranges[0])]
    for a, b in ranges[1:]:
        last = out[-1]
        if a <= last[1] + 1:
            if b > last[1]:
                last[1] = b
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def _union(*sets: _Ranges) -> _Ranges:
    allr: list[tuple[int, int]] = []
    for s in sets:
        allr.extend(s)
    return _normalize_ranges(allr)


def _complement(s: _Ranges) -> _Ranges:
    out: list[tuple[int, int]] = []
    prev = 0
    for a, b in s:
        if a > prev:
            out.append((prev, a - 1))
        prev = b + 1
    if prev <= _MAX_CP:
        out.append((prev, _MAX_CP))
    return tuple(out)


def _intersect(x: _Ranges, y: _Ranges) -> _Ranges:
    return _complement(_union(_complement(x), _complement(y)))


_CAT_GROUPS: dict[str, tuple[str, ...]] = {
    "L": ("Lu", "Ll", "Lt", "Lm", "Lo"),
    "LC": ("Lu", "Ll", "Lt"),
    "M": ("Mn", "Mc", "Me"),
    "N": ("Nd", "Nl", "No"),
    "P": ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"),
    "S": ("Sm", "Sc", "Sk", "So"),
    "Z": ("Zs", "Zl", "Zp"),
    "C": ("Cc", "Cf", "Cs", "Co", "Cn"),
}


@lru_cache(maxsize=None)
def _category(name: str) -> _Ranges:
    """Code point ranges of a general category (``Lu``) or category group (``L``)."""
    if name in _CAT_GROUPS:
        return _union(*(_category(n) for n in _CAT_GROUPS[name]))
    return _parse_ranges(_ut.CATEGORIES[name])


@lru_cache(maxsize=None)
def _derived(name: str) -> _Ranges:
    if name == "White_Space":
        return _parse_ranges(_ut.WHITE_SPACE)
    return _parse_ranges(_ut.DERIVED[name])


_XDIGIT: _Ranges = ((0x30, 0x39), (0x41, 0x46), (0x61, 0x66))

_LONG_CAT_NAMES = {
    "letter": "L", "casedletter": "LC", "uppercaseletter": "Lu",
    "lowercaseletter": "Ll", "titlecaseletter": "Lt", "modifierletter": "Lm",
    "otherletter": "Lo", "mark": "M", "combiningmark": "M", "nonspacingmark": "Mn",
    "spacingmark": "Mc", "enclosingmark": "Me", "number": "N", "decimalnumber": "Nd",
    "letternumber": "Nl", "othernumber": "No", "punctuation": "P",
    "connectorpunctuation": "Pc", "dashpunctuation": "Pd", "openpunctuation": "Ps",
    "closepunctuation": "Pe", "initialpunctuation": "Pi", "finalpunctuation": "Pf",
    "otherpunctuation": "Po", "symbol": "S", "mathsymbol": "Sm", "currencysymbol": "Sc",
    "modifiersymbol": "Sk", "othersymbol": "So", "separator": "Z", "spaceseparator": "Zs",
    "lineseparator": "Zl", "paragraphseparator": "Zp", "other": "C", "control": "Cc",
    "format": "Cf", "surrogate": "Cs", "privateuse": "Co", "unassigned": "Cn",
}
_SHORT_CATS = {k.lower(): k for k in list(_ut.CATEGORIES) + list(_CAT_GROUPS)}


@lru_cache(maxsize=None)
def _onig_property(name: str, posix: bool = False) -> _Ranges:
    """Ranges of an Oniguruma property name as used in ``\\p{name}`` (or ``[[:name:]]``)."""
    key = name.replace(" ", "").replace("_", "").replace("-", "").lower()
    if key in _SHORT_CATS:
        return _category(_SHORT_CATS[key])
    if key in _LONG_CAT_NAMES:
        return _category(_LONG_CAT_NAMES[key])
    if key in ("alpha", "alphabetic"):
        return _derived("Alphabetic")
    if key in ("lower", "lowercase"):
        return _derived("Lowercase")
    if key in ("upper", "uppercase"):
        return _derived("Uppercase")
    if key == "digit":
        return _category("Nd")
    if key == "alnum":
        return _union(_derived("Alphabetic"), _category("Nd"))
    if key in ("space", "whitespace"):
        return _derived("White_Space")
    if key == "word":
        if posix:  # [[:word:]] lacks the Latin-1 superscripts/fractions that \w has
            return _intersect(_derived("OnigWord"), _complement(
                ((0xB2, 0xB3), (0xB9, 0xB9), (0xBC, 0xBE))))
        return _derived("OnigWord")
    if key == "punct":  # \p{Punct} is P; the POSIX bracket adds the symbols
        return _union(_category("P"), _category("S")) if posix else _category("P")
    if key == "graph":
        return _union(*(_category(c) for c in ("L", "M", "N", "P", "S", "Cf", "Co")))
    if key == "print":
        return _union(*(_category(c) for c in ("L", "M", "N", "P", "S", "Cf", "Co", "Zs")))
    if key == "cntrl":
        return _category("Cc")
    if key == "xdigit":
        return _XDIGIT
    if key == "blank":
        return _union(_category("Zs"), ((9, 9),))
    if key == "ascii":
        return ((0, 0x7F),)
    if key == "any":
        return ((0, _MAX_CP),)
    if key == "assigned":
        return _complement(_category("Cn"))
    raise ValueError(f"unsupported Unicode property in tokenizer regex: {name!r}")


def _esc_cp(c: int) -> str:
    if c < 0x80 and (chr(c).isalnum()):
        return chr(c)
    if c <= 0xFFFF:
        return f"\\u{c:04x}"
    return f"\\U{c:08x}"


@lru_cache(maxsize=None)
def _class_str(s: _Ranges) -> str:
    """A Python ``re`` atom matching exactly one code point of ``s``."""
    if not s:
        return "(?!)"
    comp = _complement(s)
    neg = 0 < len(comp) < len(s)
    body = comp if neg else s
    parts = [_esc_cp(a) if a == b else f"{_esc_cp(a)}-{_esc_cp(b)}" for a, b in body]
    return ("[^" if neg else "[") + "".join(parts) + "]"


# ---------------------------------------------------------------------------------------
# Oniguruma (Ruby syntax) -> Python re translation
# ---------------------------------------------------------------------------------------

_HEX = "0123456789abcdefABCDEF"
_SIMPLE_ESC = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "a": 0x07, "e": 0x1B}


def _word_set() -> _Ranges:
    return _derived("OnigWord")


def _escape_set(ch: str) -> _Ranges | None:
    """Sets for ``\\d \\s \\w \\h`` and their negations (Oniguruma Unicode semantics)."""
    base: _Ranges
    low = ch.lower()
    if low == "d":
        base = _category("Nd")
    elif low == "s":
        base = _derived("White_Space")
    elif low == "w":
        base = _word_set()
    elif low == "h":
        base = _XDIGIT
    else:
        return None
    return _complement(base) if ch.isupper() else base


class _OnigTranslator:
    """Recursive-descent translator of the Oniguruma Ruby-syntax subset used by tokenizers."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0
        self.extended = False
        self.keep_groups = bool(re.search(r"\\(?:[1-9]|k<)", pattern))

    def error(self, msg: str) -> ValueError:
        return ValueError(f"cannot translate tokenizer regex {self.p!r} at {self.i}: {msg}")

    def translate(self) -> str:
        branches = self.parse_alt()
        if self.i < len(self.p):
            raise self.error("unbalanced ')'")
        return "|".join(branches)

    # -- structure ---------------------------------------------------------------------
    def parse_alt(self) -> list[str]:
        """Parse alternatives up to (not including) ``)`` or the end."""
        branches: list[str] = []
        while True:
            items, isolated = self.parse_branch()
            branches.append("".join(items))
            if isolated is not None:
                # An isolated option group swallowed the rest of the enclosing group.
                return branches
            if self.i < len(self.p) and self.p[self.i] == "|":
                self.i += 1
                continue
            return branches

    def parse_branch(self) -> tuple[list[str], str | None]:
        items: list[str] = []
        quant: list[int] = []  # per item: 0 none, 1 quantified (*+?), 2 interval {n,m}
        p = self.p
        while self.i < len(p):
            c = p[self.i]
            if c == "|" or c == ")":
                return items, None
            if self.extended and c in " \t\n\r\f\v":
                self.i += 1
                continue
            if self.extended and c == "#":
                while self.i < len(p) and p[self.i] != "\n":
                    self.i += 1
                continue
            if c in "*+?":
                self.i += 1
                self.apply_quant(items, quant, c, 1)
                continue
            if c == "{":
                m = re.match(r"\{(\d*)(?:(,)(\d*))?\}", p[self.i:])
                if m and (m.group(1) or m.group(3)):
                    self.i += m.end()
                    lo = m.group(1) or "0"
                    q = "{" + lo + ("," + m.group(3) if m.group(2) else "") + "}"
                    self.apply_quant(items, quant, q, 2)
                    continue
                self.i += 1
                items.append("\\{")
                quant.append(0)
                continue
            if c == "(":
                res = self.parse_group()
                if isinstance(res, tuple):
                    # isolated option "(?i)": wraps the rest of the enclosing group
                    flags_on, flags_off, saved_ext = res
                    rest = self.parse_alt()
                    self.extended = saved_ext
                    items.append(self.flag_group(flags_on, flags_off, "|".join(rest)))
                    quant.append(0)
                    return items, "isolated"
                if res:
                    items.append(res)
                    quant.append(0)
                continue
            if c == "[":
                self.i += 1
                items.append(_class_str(self.parse_class()))
                quant.append(0)
                continue
            if c == "\\":
                items.append(self.parse_escape())
                quant.append(0)
                continue
            self.i += 1
            if c in ".^$":
                items.append(c)
            else:
                items.append(re.escape(c))
            quant.append(0)
        return items, None

    def apply_quant(self, items: list[str], quant: list[int], q: str, kind: int) -> None:
        if not items:
            raise self.error("quantifier without target")
        last = len(items) - 1
        if quant[last] == 0:
            items[last] += q
            quant[last] = kind
            # lazy / possessive suffix
            if self.i < len(self.p) and self.p[self.i] in "?+":
                mod = self.p[self.i]
                if mod == "?" or kind == 1:
                    self.i += 1
                    items[last] += mod
                    quant[last] = 3  # closed: a further quantifier nests
            return
        # stacked quantifier (e.g. Ruby's a{2}+ == (?:a{2})+): nest
        items[last] = "(?:" + items[last] + ")" + q
        quant[last] = kind

    def flag_group(self, on: str, off: str, body: str) -> str:
        on_py = on.replace("m", "s").replace("x", "")
        off_py = off.replace("m", "s").replace("x", "")
        if not on_py and not off_py:
            return "(?:" + body + ")"
        return "(?" + on_py + ("-" + off_py if off_py else "") + ":" + body + ")"

    def parse_group(self) -> str | tuple[str, str, bool]:
        p = self.p
        self.i += 1  # '('
        if p.startswith("?#", self.i):
            end = p.find(")", self.i)
            if end < 0:
                raise self.error("unterminated comment")
            self.i = end + 1
            return ""
        prefix: str
        lookbehind: str | None = None
        if p.startswith("?:", self.i):
            prefix = "(?:"
            self.i += 2
        elif p.startswith("?=", self.i) or p.startswith("?!", self.i):
            prefix = "(" + p[self.i:self.i + 2]
            self.i += 2
        elif p.startswith("?<=", self.i) or p.startswith("?<!", self.i):
            lookbehind = p[self.i + 2]
            prefix = ""
            self.i += 3
        elif p.startswith("?>", self.i):
            prefix = "(?>"
            self.i += 2
        elif p.startswith("?<", self.i) or p.startswith("?'", self.i):
            close = ">" if p[self.i + 1] == "<" else "'"
            end = p.find(close, self.i + 2)
            if end < 0:
                raise self.error("bad group name")
            name = p[self.i + 2:end]
            prefix = "(?P<" + name + ">"
            self.i = end + 1
        elif p.startswith("?", self.i):
            m = re.match(r"\?([imx]*)(?:-([imx]*))?([:)])", p[self.i:])
            if not m:
                raise self.error("unsupported group syntax")
            self.i += m.end()
            on, off = m.group(1), m.group(2) or ""
            saved_ext = self.extended
            if "x" in on:
                self.extended = True
            if "x" in off:
                self.extended = False
            if m.group(3) == ")":
                return (on, off, saved_ext)
            body = "|".join(self.parse_alt())
            self.expect_close()
            self.extended = saved_ext
            return self.flag_group(on, off, body)
        else:
            prefix = "(" if self.keep_groups else "(?:"
        saved_ext = self.extended
        branches = self.parse_alt()
        self.expect_close()
        self.extended = saved_ext
        if lookbehind is not None:
            if lookbehind == "=":
                if len(branches) == 1:
                    return "(?<=" + branches[0] + ")"
                return "(?:" + "|".join("(?<=" + b + ")" for b in branches) + ")"
            return "".join("(?<!" + b + ")" for b in branches)
        return prefix + "|".join(branches) + ")"

    def expect_close(self) -> None:
        if self.i >= len(self.p) or self.p[self.i] != ")":
            raise self.error("missing ')'")
        self.i += 1

    # -- escapes -----------------------------------------------------------------------
    def read_property(self) -> _Ranges:
        """After ``\\p`` or ``\\P``: read ``{Name}`` / ``{^Name}``."""
        p = self.p
        neg = p[self.i - 1] == "P"
        if self.i >= len(p) or p[self.i] != "{":
            raise self.error("expected '{' after \\p")
        end = p.find("}", self.i)
        if end < 0:
            raise self.error("unterminated \\p{")
        name = p[self.i + 1:end]
        self.i = end + 1
        if name.startswith("^"):
            neg = not neg
            name = name[1:]
        r = _onig_property(name)
        return _complement(r) if neg else r

    def read_codepoint_escape(self, c: str) -> int | None:
        """Escapes that denote one code point (``c`` is the char after ``\\``, consumed)."""
        p = self.p
        if c in _SIMPLE_ESC:
            return _SIMPLE_ESC[c]
        if c == "x":
            if self.i < len(p) and p[self.i] == "{":
                end = p.find("}", self.i)
                if end < 0:
                    raise self.error("bad \\x{")
                v = int(p[self.i + 1:end].strip(), 16)
                self.i = end + 1
                return v
            j = self.i
            while j < len(p) and j < self.i + 2 and p[j] in _HEX:
                j += 1
            v = int(p[self.i:j], 16) if j > self.i else 0
            self.i = j
            return v
        if c == "u":
            digits = p[self.i:self.i + 4]
            if len(digits) == 4 and all(d in _HEX for d in digits):
                self.i += 4
                return int(digits, 16)
            raise self.error("bad \\u escape")
        if c == "0":
            j = self.i
            while j < len(p) and j < self.i + 2 and p[j] in "01234567":
                j += 1
            v = int("0" + p[self.i:j], 8)
            self.i = j
            return v
        return None

    def parse_escape(self) -> str:
        p = self.p
        self.i += 1
        if self.i >= len(p):
            raise self.error("trailing backslash")
        c = p[self.i]
        self.i += 1
        if c in "pP":
            return _class_str(self.read_property())
        es = _escape_set(c)
        if es is not None:
            return _class_str(es)
        if c in "bB":
            w = _class_str(_word_set())
            if c == "b":
                return f"(?:(?<={w})(?!{w})|(?<!{w})(?={w}))"
            return f"(?:(?<={w})(?={w})|(?<!{w})(?!{w}))"
        if c == "A":
            return "\\A"
        if c == "z":
            return "\\Z"
        if c == "Z":
            return "(?=\\n?\\Z)"
        if c in "123456789":
            j = self.i
            while j < len(p) and p[j].isdigit():
                j += 1
            ref = c + p[self.i:j]
            self.i = j
            return "(?:\\" + ref + ")"
        if c == "k" and self.i < len(p) and p[self.i] == "<":
            end = p.find(">", self.i)
            name = p[self.i + 1:end]
            self.i = end + 1
            if name.isdigit():
                return "(?:\\" + name + ")"
            return "(?P=" + name + ")"
        cp = self.read_codepoint_escape(c)
        if cp is not None:
            return _class_str(((cp, cp),)) if cp > 0x7F else re.escape(chr(cp))
        if c in "GKRXgNOyYcCM":
            raise self.error(f"unsupported escape \\{c}")
        return re.escape(c)

    # -- character classes ---------------------------------------------------------------
    def parse_class(self) -> _Ranges:
        """Parse a class body after ``[`` up to and including the closing ``]``."""
        p = self.p
        neg = False
        if self.i < len(p) and p[self.i] == "^":
            neg = True
            self.i += 1
        acc: list[tuple[int, int]] = []
        first = True
        while True:
            if self.i >= len(p):
                raise self.error("unterminated character class")
            c = p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if p.startswith("&&", self.i):
                self.i += 2
                left = _normalize_ranges(acc)
                right = self.parse_class_rest()
                res = _intersect(left, right)
                return _complement(res) if neg else res
            if c == "[":
                if p.startswith("[:", self.i):
                    end = p.find(":]", self.i + 2)
                    if end >= 0 and re.fullmatch(r"\^?[A-Za-z]+", p[self.i + 2:end]):
                        name = p[self.i + 2:end]
                        self.i = end + 2
                        r = _onig_property(name.lstrip("^"), posix=True)
                        acc.extend(_complement(r) if name.startswith("^") else r)
                        continue
                self.i += 1
                acc.extend(self.parse_class())
                continue
            item = self.parse_class_atom()
            if isinstance(item, tuple):
                acc.extend(item)
                continue
            lo = item
            if (self.i + 1 < len(p) and p[self.i] == "-" and p[self.i + 1] != "]"):
                save = self.i
                self.i += 1
                hi_item = self.parse_class_atom() if p[self.i] != "[" else None
                if isinstance(hi_item, int):
                    if hi_item < lo:
                        raise self.error("empty range in character class")
                    acc.append((lo, hi_item))
                    continue
                self.i = save
            acc.append((lo, lo))
        res = _normalize_ranges(acc)
        return _complement(res) if neg else res

    def parse_class_rest(self) -> _Ranges:
        """Right operand of ``&&``: the rest of the class, consuming the closing ``]``."""
        if self.i < len(self.p) and self.p[self.i] == "^":
            # a '^' right after && is a literal character
            self.i += 1
            return _union(self.parse_class(), ((0x5E, 0x5E),))
        return self.parse_class()

    def parse_class_atom(self) -> int | _Ranges:
        p = self.p
        c = p[self.i]
        if c != "\\":
            self.i += 1
            return ord(c)
        self.i += 1
        if self.i >= len(p):
            raise self.error("trailing backslash in class")
        c = p[self.i]
        self.i += 1
        if c in "pP":
            return self.read_property()
        es = _escape_set(c)
        if es is not None:
            return es
        if c == "b":
            return 0x08
        cp = self.read_codepoint_escape(c)
        if cp is not None:
            return cp
        if c.isdigit():
            # octal like \101
            j = self.i
            while j < len(p) and j < self.i + 2 and p[j] in "01234567":
                j += 1
            v = int(c + p[self.i:j], 8)
            self.i = j
            return v
        return ord(c)


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def _compile_onig(pattern: str) -> re.Pattern[str]:
    """Compile an Oniguruma (Ruby syntax) pattern into an equivalent Python regex."""
    rx = _REGEX_CACHE.get(pattern)
    if rx is None:
        py = _OnigTranslator(pattern).translate()
        rx = re.compile(py, re.MULTILINE)
        _REGEX_CACHE[pattern] = rx
    return rx


def _class_regex(s: _Ranges) -> re.Pattern[str]:
    """Regex matching a single code point of ``s`` (a char-predicate pattern)."""
    key = "\x00class:" + _class_str(s)
    rx = _REGEX_CACHE.get(key)
    if rx is None:
        rx = re.compile(_class_str(s))
        _REGEX_CACHE[key] = rx
    return rx


# ---------------------------------------------------------------------------------------
# Pattern matching and splitting (tokenizers' Pattern / NormalizedString::split)
# ---------------------------------------------------------------------------------------

_Match = tuple[int, int, bool]


def _onig_spans(rx: re.Pattern[str], s: str) -> list[tuple[int, int]]:
    """Match spans as Oniguruma's find_iter yields them (no empty match right after a match)."""
    spans: list[tuple[int, int]] = []
    last_end = 0
    last_match_end = -1
    for m in rx.finditer(s):
        a, b = m.span()
        if a == b:
            break
        spans.append((a, b))
        last_end = last_match_end = b
    else:
        return spans
    n = len(s)
    while last_end <= n:
        m2 = rx.search(s, last_end)
        if m2 is None:
            break
        a, b = m2.span()
        if a == b and last_match_end == b:
            last_end += 1
            continue
        spans.append((a, b))
        last_end = last_match_end = b
    return spans


def _find_matches(rx: re.Pattern[str], s: str, invert: bool = False) -> list[_Match]:
    if not s:
        return [(0, 0, invert)]
    out: list[_Match] = []
    prev = 0
    hit = not invert
    miss = invert
    for a, b in _onig_spans(rx, s):
        if prev != a:
            out.append((prev, a, miss))
        out.append((a, b, hit))
        prev = b
    if prev != len(s):
        out.append((prev, len(s), miss))
    return out


def _split(s: str, rx: re.Pattern[str], behavior: str, invert: bool = False) -> list[str]:
    """NormalizedString::split, dropping empty pieces (as PreTokenizedString::split does)."""
    if behavior == "Isolated" and not invert and rx.groups == 0:
        pieces: list[str] = rx.findall(s)
        if sum(map(len, pieces)) == len(s) and "" not in pieces:
            return pieces
    matches = _find_matches(rx, s, invert)
    spans: list[tuple[int, int]]
    if behavior == "Isolated":
        spans = [(a, b) for a, b, _ in matches]
    elif behavior == "Removed":
        spans = [(a, b) for a, b, m in matches if not m]
    elif behavior == "Contiguous":
        acc: list[list[int]] = []
        prev_match = False
        for a, b, m in matches:
            if m == prev_match and acc:
                acc[-1][1] = b
            else:
                acc.append([a, b])
            prev_match = m
        spans = [(x[0], x[1]) for x in acc]
    elif behavior == "MergedWithPrevious":
        acc = []
        prev_match = False
        for a, b, m in matches:
            if m and not prev_match and acc:
                acc[-1][1] = b
            else:
                acc.append([a, b])
            prev_match = m
        spans = [(x[0], x[1]) for x in acc]
    elif behavior == "MergedWithNext":
        acc = []
        prev_match = False
        for a, b, m in reversed(matches):
            if m and not prev_match and acc:
                acc[-1][0] = a
            else:
                acc.append([a, b])
            prev_match = m
        spans = [(x[0], x[1]) for x in reversed(acc)]
    else:
        raise ValueError(f"unsupported split behavior {behavior!r}")
    return [s[a:b] for a, b in spans if b > a]


def _replace(s: str, rx: re.Pattern[str], content: str) -> str:
    if not s:
        return s
    return "".join(content if m else s[a:b] for a, b, m in _find_matches(rx, s))


def _literal_regex(literal: str) -> re.Pattern[str]:
    """tokenizers compiles String patterns as an escaped Oniguruma regex."""
    return _compile_onig(re.escape(literal)) if literal else re.compile("")


def _pattern_regex(spec: Any) -> re.Pattern[str]:
    if isinstance(spec, dict):
        if "Regex" in spec:
            return _compile_onig(spec["Regex"])
        if "String" in spec:
            return _literal_regex(spec["String"])
    if isinstance(spec, str):
        return _literal_regex(spec)
    raise ValueError(f"unsupported pattern {spec!r}")


# ---------------------------------------------------------------------------------------
# Byte-level alphabet
# ---------------------------------------------------------------------------------------


def _bytes_char() -> dict[int, str]:
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_BYTES_CHAR = _bytes_char()
_CHAR_BYTES = {c: b for b, c in _BYTES_CHAR.items()}
_BYTE_TRANS = {b: c for b, c in _BYTES_CHAR.items()}  # for latin-1 decoded bytes


def _to_byte_level(s: str) -> str:
    return s.encode("utf-8").decode("latin-1").translate(_BYTE_TRANS)


_GPT2_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
                 r"|\s+(?!\S)|\s+")

# ---------------------------------------------------------------------------------------
# Normalizers
# ---------------------------------------------------------------------------------------

_Normalizer = Callable[[str], str]


_LOWER_TABLE: dict[int, str] | None = None


def _lowercase(s: str) -> str:
    """Rust ``char::to_lowercase`` char by char (fixed table; no final-sigma rule)."""
    global _LOWER_TABLE
    if _LOWER_TABLE is None:
        table: dict[int, str] = {}
        for item in _ut.LOWERCASE.split(","):
            cp, _, low = item.partition(":")
            table[int(cp, 16)] = "".join(chr(int(x, 16)) for x in low.split())
        _LOWER_TABLE = table
    return s.translate(_LOWER_TABLE)


def _is_ws_char(c: str) -> bool:
    return _ws_rx.match(c) is not None


_ws_rx = re.compile(_class_str(_derived("White_Space")))
_ws_run_start = re.compile(_class_str(_derived("White_Space")) + "*")
_ws_run_end = re.compile(_class_str(_derived("White_Space")) + "*\\Z")


def _make_normalizer(spec: dict[str, Any] | None) -> _Normalizer | None:
    if spec is None:
        return None
    t = spec.get("type")
    if t in ("NFC", "NFD", "NFKC", "NFKD"):
        form: Any = t
        return lambda s: unicodedata.normalize(form, s)
    if t == "Lowercase":
        return _lowercase
    if t == "Sequence":
        subs = [n for n in (_make_normalizer(x) for x in spec.get("normalizers", [])) if n]

        def seq(s: str) -> str:
            for n in subs:
                s = n(s)
            return s
        return seq
    if t == "Strip":
        left = bool(spec.get("strip_left", True))
        right = bool(spec.get("strip_right", True))

        def strip(s: str) -> str:
            if left:
                m = _ws_run_start.match(s)
                s = s[m.end():] if m else s
            if right:
                m2 = _ws_run_end.search(s)
                s = s[:m2.start()] if m2 else s
            return s
        return strip
    if t == "StripAccents":
        marks = _class_regex(_derived("RustMark"))
        return lambda s: marks.sub("", s)
    if t == "Replace":
        rx = _pattern_regex(spec["pattern"])
        content = str(spec.get("content", ""))
        return lambda s: _replace(s, rx, content)
    if t == "Prepend":
        pre = str(spec.get("prepend", ""))
        return lambda s: pre + s if s else s
    if t == "ByteLevel":
        return _to_byte_level
    raise ValueError(f"unsupported normalizer type {t!r}")


# ---------------------------------------------------------------------------------------
# Pre-tokenizers: each step maps a list of pieces to a list of pieces
# ---------------------------------------------------------------------------------------

_PreStep = Callable[[list[str], bool], list[str]]


def _split_step(rx: re.Pattern[str], behavior: str, invert: bool = False) -> _PreStep:
    def step(pieces: list[str], first: bool) -> list[str]:
        out: list[str] = []
        for p in pieces:
            out.extend(_split(p, rx, behavior, invert))
        return out
    return step


def _make_pre_steps(spec: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Flatten a pre-tokenizer spec into ``(kind, step_or_config)`` items."""
    if spec is None:
        return []
    t = spec.get("type")
    if t == "Sequence":
        steps: list[tuple[str, Any]] = []
        for sub in spec.get("pretokenizers", []):
            steps.extend(_make_pre_steps(sub))
        return steps
    if t == "ByteLevel":
        return [("bytelevel", (bool(spec.get("add_prefix_space", True)),
                               bool(spec.get("use_regex", True))))]
    if t == "Split":
        behavior = _behavior(spec.get("behavior", "Isolated"))
        return [("step", _split_step(_pattern_regex(spec["pattern"]), behavior,
                                     bool(spec.get("invert", False))))]
    if t == "Digits":
        rx = _class_regex(_derived("RustNumeric"))
        beh = "Isolated" if spec.get("individual_digits", False) else "Contiguous"
        return [("step", _split_step(rx, beh))]
    if t == "Whitespace":
        w = _class_str(_derived("RustWord"))
        other = _class_str(_complement(_union(_derived("RustWord"), _derived("White_Space"))))
        rx = re.compile(f"{w}+|{other}+")
        return [("step", _split_step(rx, "Removed", invert=True))]
    if t == "WhitespaceSplit":
        return [("step", _split_step(_class_regex(_derived("White_Space")), "Removed"))]
    if t == "Punctuation":
        rx = _class_regex(_derived("RustPunct"))
        return [("step", _split_step(rx, _behavior(spec.get("behavior", "Isolated"))))]
    if t == "BertPreTokenizer":
        return [("step", _split_step(_class_regex(_derived("White_Space")), "Removed")),
                ("step", _split_step(_class_regex(_derived("RustPunct")), "Isolated"))]
    if t == "CharDelimiterSplit":
        d = ord(spec["delimiter"])
        return [("step", _split_step(_class_regex(((d, d),)), "Removed"))]
    if t == "FixedLength":
        n = int(spec.get("length", 5))

        def fixed(pieces: list[str], first: bool) -> list[str]:
            return [p[i:i + n] for p in pieces for i in range(0, len(p), n)]
        return [("step", fixed)]
    if t == "Metaspace":
        return [("step", _metaspace_step(spec))]
    raise ValueError(f"unsupported pre_tokenizer type {t!r}")


def _behavior(b: str) -> str:
    names = {"isolated": "Isolated", "removed": "Removed", "contiguous": "Contiguous",
             "mergedwithprevious": "MergedWithPrevious", "mergedwithnext": "MergedWithNext"}
    key = b.replace("_", "").lower()
    if key not in names:
        raise ValueError(f"unsupported split behavior {b!r}")
    return names[key]


def _metaspace_scheme(spec: dict[str, Any]) -> str:
    scheme = str(spec.get("prepend_scheme", "always")).lower()
    if spec.get("add_prefix_space") is False:
        scheme = "never"
    return scheme


def _metaspace_step(spec: dict[str, Any]) -> _PreStep:
    rep = str(spec.get("replacement", "\u2581"))
    scheme = _metaspace_scheme(spec)
    do_split = spec.get("split", True) is not False
    rx = _class_regex(((ord(rep), ord(rep)),))

    def step(pieces: list[str], first: bool) -> list[str]:
        out: list[str] = []
        for idx, p in enumerate(pieces):
            p = p.replace(" ", rep)
            if p and not p.startswith(rep):
                if scheme == "always" or (scheme == "first" and first and idx == 0):
                    p = rep + p
            if do_split:
                out.extend(_split(p, rx, "MergedWithNext"))
            elif p:
                out.append(p)
        return out
    return step


def _bytelevel_split_step(add_prefix_space: bool, use_regex: bool) -> _PreStep:
    rx = _compile_onig(_GPT2_PATTERN)

    def step(pieces: list[str], first: bool) -> list[str]:
        out: list[str] = []
        for p in pieces:
            if add_prefix_space and p and not p.startswith(" "):
                p = " " + p
            if use_regex:
                out.extend(_split(p, rx, "Isolated"))
            elif p:
                out.append(p)
        return out
    return step


def _bytelevel_map_step(pieces: list[str], first: bool) -> list[str]:
    return [_to_byte_level(p) for p in pieces]


# ---------------------------------------------------------------------------------------
# Decoders: each maps a list of token strings to a list of strings
# ---------------------------------------------------------------------------------------

_Decoder = Callable[[list[str]], list[str]]


def _bytelevel_decode(tokens: list[str]) -> list[str]:
    buf = bytearray()
    cb = _CHAR_BYTES
    for t in tokens:
        try:
            buf.extend([cb[c] for c in t])
        except KeyError:
            buf.extend(t.encode("utf-8"))
    return [bytes(buf).decode("utf-8", "replace")]


def _byte_fallback_decode(tokens: list[str]) -> list[str]:
    out: list[str] = []
    pending = bytearray()

    def flush() -> None:
        if pending:
            try:
                out.append(bytes(pending).decode("utf-8"))
            except UnicodeDecodeError:
                out.extend(["\ufffd"] * len(pending))
            pending.clear()

    for t in tokens:
        b = _byte_token(t)
        if b is not None:
            pending.append(b)
        else:
            flush()
            out.append(t)
    flush()
    return out


def _byte_token(t: str) -> int | None:
    if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
        h = t[3:5]
        if all(c in _HEX for c in h):
            return int(h, 16)
    return None


def _wordpiece_cleanup(s: str) -> str:
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                 (" n't", "n't"), (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"),
                 (" 've", "'ve"), (" 're", "'re")):
        s = s.replace(a, b)
    return s


def _make_decoder(spec: dict[str, Any] | None) -> _Decoder | None:
    if spec is None:
        return None
    t = spec.get("type")
    if t == "ByteLevel":
        return _bytelevel_decode
    if t == "Sequence":
        subs = [d for d in (_make_decoder(x) for x in spec.get("decoders", [])) if d]

        def seq(tokens: list[str]) -> list[str]:
            for d in subs:
                tokens = d(tokens)
            return tokens
        return seq
    if t == "Fuse":
        return lambda tokens: ["".join(tokens)]
    if t == "ByteFallback":
        return _byte_fallback_decode
    if t == "Replace":
        rx = _pattern_regex(spec["pattern"])
        content = str(spec.get("content", ""))
        return lambda tokens: [_replace(tok, rx, content) for tok in tokens]
    if t == "Strip":
        ch = str(spec.get("content", " "))
        start = int(spec.get("start", 0))
        stop = int(spec.get("stop", 0))

        def strip(tokens: list[str]) -> list[str]:
            out = []
            for tok in tokens:
                a = 0
                for i in range(min(start, len(tok))):
                    if tok[i] == ch:
                        a = i + 1
                    else:
                        break
                b = len(tok)
                for i in range(min(stop, len(tok))):
                    j = len(tok) - i - 1
                    if tok[j] == ch:
                        b = j
                    else:
                        break
                out.append(tok[a:b] if a < b else "")
            return out
        return strip
    if t == "Metaspace":
        rep = str(spec.get("replacement", "\u2581"))
        never = _metaspace_scheme(spec) == "never"

        def meta(tokens: list[str]) -> list[str]:
            return [tok.replace(rep, "" if (i == 0 and not never) else " ")
                    for i, tok in enumerate(tokens)]
        return meta
    if t == "BPEDecoder":
        suffix = str(spec.get("suffix", "</w>"))

        def bpe(tokens: list[str]) -> list[str]:
            n = len(tokens) - 1
            return [tok.replace(suffix, "" if i == n else " ") for i, tok in enumerate(tokens)]
        return bpe
    if t == "WordPiece":
        prefix = str(spec.get("prefix", "##"))
        cleanup = bool(spec.get("cleanup", True))

        def wp(tokens: list[str]) -> list[str]:
            out = []
            for i, tok in enumerate(tokens):
                if i != 0:
                    tok = tok[len(prefix):] if tok.startswith(prefix) else " " + tok
                out.append(_wordpiece_cleanup(tok) if cleanup else tok)
            return out
        return wp
    if t == "CTC":
        pad = str(spec.get("pad_token", "<pad>"))
        delim = str(spec.get("word_delimiter_token", "|"))
        cleanup_ctc = bool(spec.get("cleanup", True))

        def ctc(tokens: list[str]) -> list[str]:
            out = []
            prev: str | None = None
            for tok in tokens:
                if tok == prev:
                    continue
                prev = tok
                r = tok.replace(pad, "")
                if cleanup_ctc:
                    r = _wordpiece_cleanup(r).replace(delim, " ")
                if r:
                    out.append(r)
            return out
        return ctc
    raise ValueError(f"unsupported decoder type {t!r}")


# ---------------------------------------------------------------------------------------
# Post-processors (single sequence): ids -> ids
# ---------------------------------------------------------------------------------------

_PostProcessor = Callable[[list[int]], list[int]]


def _make_post_processor(spec: dict[str, Any] | None) -> _PostProcessor | None:
    if spec is None:
        return None
    t = spec.get("type")
    if t == "ByteLevel":
        return lambda ids: ids
    if t == "TemplateProcessing":
        specials: dict[str, list[int]] = {
            k: [int(i) for i in v["ids"]] for k, v in spec.get("special_tokens", {}).items()}
        template: list[list[int] | None] = []
        for piece in spec.get("single", []):
            if isinstance(piece, str):  # "$A" / "[CLS]" short form
                if piece.startswith("$"):
                    template.append(None)
                else:
                    template.append(specials[piece])
            elif "Sequence" in piece:
                template.append(None)
            elif "SpecialToken" in piece:
                key = piece["SpecialToken"]["id"]
                if key not in specials:
                    raise ValueError(f"TemplateProcessing: missing special token {key!r}")
                template.append(specials[key])
            else:
                raise ValueError(f"unsupported template piece {piece!r}")

        def tpl(ids: list[int]) -> list[int]:
            out: list[int] = []
            for part in template:
                out.extend(ids if part is None else part)
            return out
        return tpl
    if t in ("RobertaProcessing", "BertProcessing"):
        cls_id = int(spec["cls"][1])
        sep_id = int(spec["sep"][1])
        return lambda ids: [cls_id, *ids, sep_id]
    if t == "Sequence":
        subs = [p for p in (_make_post_processor(x) for x in spec.get("processors", [])) if p]

        def seq(ids: list[int]) -> list[int]:
            for p in subs:
                ids = p(ids)
            return ids
        return seq
    raise ValueError(f"unsupported post_processor type {t!r}")


# ---------------------------------------------------------------------------------------
# Added tokens
# ---------------------------------------------------------------------------------------


class _AddedToken:
    __slots__ = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")

    def __init__(self, d: dict[str, Any]) -> None:
        self.content = str(d["content"])
        self.special = bool(d.get("special", False))
        self.single_word = bool(d.get("single_word", False))
        self.lstrip = bool(d.get("lstrip", False))
        self.rstrip = bool(d.get("rstrip", False))
        self.normalized = bool(d.get("normalized", not self.special))

    def key(self) -> tuple[str, bool, bool, bool, bool, bool]:
        return (self.content, self.single_word, self.lstrip, self.rstrip, self.normalized,
                self.special)


class _AddedMatcher:
    """Leftmost-longest matching of a set of added tokens (tokenizers' find_matches)."""

    def __init__(self, patterns: dict[str, tuple[int, _AddedToken]]) -> None:
        self.patterns = patterns
        alts = sorted(patterns, key=lambda x: (-len(x), x))
        self.rx = re.compile("|".join(re.escape(a) for a in alts))
        self.word = _class_regex(_derived("RustWord"))

    def split(self, s: str) -> list[str | int]:
        if not s:
            return []
        out: list[str | int] = []
        start_offset = 0
        word = self.word
        for m in self.rx.finditer(s):
            start, stop = m.span()
            tid, tok = self.patterns[m.group()]
            if tok.single_word:
                start_space = start == 0 or word.match(s, start - 1) is None
                stop_space = stop == len(s) or word.match(s, stop) is None
                if not (start_space and stop_space):
                    continue
            if tok.lstrip:
                newstart = start
                while newstart > 0 and _is_ws_char(s[newstart - 1]):
                    newstart -= 1
                start = max(newstart, start_offset)
            if tok.rstrip:
                while stop < len(s) and _is_ws_char(s[stop]):
                    stop += 1
            if start_offset < start:
                out.append(s[start_offset:start])
            out.append(tid)
            start_offset = stop
        if start_offset != len(s):
            out.append(s[start_offset:])
        return out


# ---------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------

_CACHE_MAX_ENTRIES = 50_000
_CACHE_MAX_WORD = 256
_HEAP_THRESHOLD = 64


class Tokenizer:
    """A byte-level (or plain) BPE tokenizer equivalent to a Hugging Face ``tokenizer.json``."""

    special_ids: frozenset[int]

    def __init__(self, data: dict[str, Any]) -> None:
        """Build from the parsed JSON of a ``tokenizer.json`` (see :meth:`from_dict`)."""
        model = data.get("model")
        if not isinstance(model, dict):
            raise ValueError("tokenizer.json has no model")
        mtype = model.get("type", "BPE" if "merges" in model else None)
        if mtype != "BPE":
            raise ValueError(f"unsupported tokenizer model type {mtype!r} (only BPE)")
        # "truncation" / "padding" settings are deliberately not applied: encode() always
        # returns the whole sequence (what an LLM runtime wants).

        vocab: dict[str, int] = {str(k): int(v) for k, v in model.get("vocab", {}).items()}
        self._vocab = vocab
        self._vocab_r: dict[int, str] = {v: k for k, v in vocab.items()}
        self._unk_token: str | None = model.get("unk_token")
        self._fuse_unk = bool(model.get("fuse_unk", False))
        self._byte_fallback = bool(model.get("byte_fallback", False))
        self._ignore_merges = bool(model.get("ignore_merges", False))
        self._prefix: str = model.get("continuing_subword_prefix") or ""
        self._suffix: str = model.get("end_of_word_suffix") or ""

        merges: dict[int, int] = {}
        plen = len(self._prefix.encode("utf-8"))
        for rank, item in enumerate(self._iter_merges(model.get("merges", []))):
            a, b = item
            a_id = vocab.get(a)
            b_id = vocab.get(b)
            if a_id is None or b_id is None:
                raise ValueError(f"merge token out of vocabulary: {a if a_id is None else b!r}")
            new_tok = (a.encode("utf-8") + b.encode("utf-8")[plen:]).decode("utf-8", "replace")
            new_id = vocab.get(new_tok)
            if new_id is None:
                raise ValueError(f"merge token out of vocabulary: {new_tok!r}")
            merges[(a_id << 32) | b_id] = (rank << 32) | new_id
        self._merges = merges

        self._normalize = _make_normalizer(data.get("normalizer"))
        self._decoder = _make_decoder(data.get("decoder"))
        self._post = _make_post_processor(data.get("post_processor"))

        # pre-tokenizer: defer the byte-level mapping to the model when it is the last step
        pre_spec = data.get("pre_tokenizer")
        raw = _make_pre_steps(pre_spec)
        steps: list[_PreStep] = []
        self._defer_bytes = False
        for idx, (kind, val) in enumerate(raw):
            if kind == "bytelevel":
                add_prefix, use_regex = val
                if add_prefix or use_regex:
                    steps.append(_bytelevel_split_step(add_prefix, use_regex))
                if idx == len(raw) - 1:
                    self._defer_bytes = True
                else:
                    steps.append(_bytelevel_map_step)
            else:
                steps.append(val)
        self._steps = steps
        self._is_byte_level = any(k == "bytelevel" for k, _ in raw) or (
            isinstance(data.get("decoder"), dict) and data["decoder"].get("type") == "ByteLevel")

        self._init_added(data.get("added_tokens") or [])
        self._cache: dict[str, tuple[int, ...]] = {}

    @staticmethod
    def _iter_merges(merges: list[Any]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for m in merges:
            if isinstance(m, str):
                if m.startswith("#version"):
                    continue
                parts = m.split(" ")
                if len(parts) != 2:
                    raise ValueError(f"bad merge line {m!r}")
                out.append((parts[0], parts[1]))
            else:
                a, b = m
                out.append((str(a), str(b)))
        return out

    def _init_added(self, tokens: list[dict[str, Any]]) -> None:
        added_map: dict[str, int] = {}
        added_r: dict[int, _AddedToken] = {}
        special: set[str] = set()
        norm_cache: dict[int, str] = {}
        next_id = len(self._vocab)
        for d in tokens:
            tok = _AddedToken(d)
            if not tok.content:
                continue
            prev = added_map.get(tok.content)
            if prev is not None and prev in added_r and added_r[prev].key() == tok.key():
                continue
            new_id = prev if prev is not None else self._vocab.get(tok.content)
            if new_id is None:
                new_id = next_id
                next_id += 1
            if tok.normalized and self._normalize is not None:
                normed = self._normalize(tok.content)
                if normed != tok.content:
                    norm_cache[new_id] = normed
            added_map[tok.content] = new_id
            if tok.special:
                special.add(tok.content)
            added_r[new_id] = tok
        self._added_map = added_map
        self._added_r = added_r
        self._special_contents = frozenset(special)
        self._added_norm_cache = norm_cache
        self.special_ids = frozenset(i for i, t in added_r.items() if t.special)

        raw_pats: dict[str, tuple[int, _AddedToken]] = {}
        norm_pats: dict[str, tuple[int, _AddedToken]] = {}
        for tid, tok in added_r.items():
            if tok.normalized:
                norm_pats.setdefault(norm_cache.get(tid, tok.content), (tid, tok))
            else:
                raw_pats.setdefault(tok.content, (tid, tok))
        norm_pats.pop("", None)
        self._raw_matcher = _AddedMatcher(raw_pats) if raw_pats else None
        self._norm_matcher = _AddedMatcher(norm_pats) if norm_pats else None

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Tokenizer":
        """Load a Hugging Face ``tokenizer.json`` file."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tokenizer":
        """Build from an already-parsed ``tokenizer.json`` dict.

        Raises ``ValueError`` for components this implementation does not support
        (e.g. WordPiece / Unigram models, Precompiled normalizers, script properties in
        regexes).
        """
        return cls(data)

    # -- encoding ----------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``, identical to ``tokenizers``' ``encode(text).ids``.

        Added tokens written in the text (e.g. ``<|im_start|>``) are recognized.
        ``add_special_tokens`` applies the post-processor template (BOS/EOS etc.).
        """
        ids: list[int] = []
        if text:
            raw = self._raw_matcher.split(text) if self._raw_matcher else [text]
            for i, seg in enumerate(raw):
                if isinstance(seg, int):
                    ids.append(seg)
                    continue
                if self._normalize is not None:
                    seg = self._normalize(seg)
                subs = self._norm_matcher.split(seg) if self._norm_matcher else [seg]
                for j, sub in enumerate(subs):
                    if isinstance(sub, int):
                        ids.append(sub)
                    elif sub:
                        self._encode_piece(sub, i == 0 and j == 0, ids)
        if self._post is not None and add_special_tokens:
            ids = self._post(ids)
        return ids

    def _encode_piece(self, s: str, first: bool, out: list[int]) -> None:
        pieces = [s]
        for step in self._steps:
            pieces = step(pieces, first)
        cache = self._cache
        for p in pieces:
            ids = cache.get(p)
            if ids is None:
                ids = self._tokenize_word(_to_byte_level(p) if self._defer_bytes else p)
                if len(p) < _CACHE_MAX_WORD:
                    if len(cache) >= _CACHE_MAX_ENTRIES:
                        cache.clear()
                    cache[p] = ids
            out.extend(ids)

    def _tokenize_word(self, word: str) -> tuple[int, ...]:
        vocab = self._vocab
        if not word:
            return ()
        if self._ignore_merges:
            wid = vocab.get(word)
            if wid is not None:
                return (wid,)
        if self._prefix or self._suffix or self._unk_token is not None or self._byte_fallback:
            syms = self._initial_symbols(word)
        else:
            got = [vocab.get(c) for c in word]
            syms = [x for x in got if x is not None]  # chars outside the vocab are dropped
        if len(syms) < 2:
            return tuple(syms)
        if len(syms) > _HEAP_THRESHOLD:
            return tuple(self._merge_heap(syms))
        merges = self._merges
        inf = 1 << 62
        get = merges.get
        vals = [get((syms[k] << 32) | syms[k + 1], inf) for k in range(len(syms) - 1)]
        while True:
            m = min(vals)
            if m == inf:
                break
            i = vals.index(m)
            new = m & 0xFFFFFFFF
            syms[i] = new
            del syms[i + 1]
            del vals[i]
            if i < len(vals):
                vals[i] = get((new << 32) | syms[i + 1], inf)
            if i > 0:
                vals[i - 1] = get((syms[i - 1] << 32) | new, inf)
            if not vals:
                break
        return tuple(syms)

    def _merge_heap(self, syms: list[int]) -> list[int]:
        """tokenizers' Word::merge_all (priority queue), for long words."""
        merges = self._merges
        n = len(syms)
        c = list(syms)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        alive = [True] * n
        heap: list[tuple[int, int, int]] = []
        for k in range(n - 1):
            v = merges.get((c[k] << 32) | c[k + 1])
            if v is not None:
                heap.append((v >> 32, k, v & 0xFFFFFFFF))
        heapq.heapify(heap)
        while heap:
            _rank, pos, new_id = heapq.heappop(heap)
            if not alive[pos]:
                continue
            right = nxt[pos]
            if right == -1:
                continue
            v = merges.get((c[pos] << 32) | c[right])
            if v is None or (v & 0xFFFFFFFF) != new_id:
                continue
            c[pos] = new_id
            alive[right] = False
            nn = nxt[right]
            nxt[pos] = nn
            if nn != -1:
                prev[nn] = pos
            p = prev[pos]
            if p >= 0:
                v = merges.get((c[p] << 32) | new_id)
                if v is not None:
                    heapq.heappush(heap, (v >> 32, p, v & 0xFFFFFFFF))
            if nn != -1:
                v = merges.get((new_id << 32) | c[nn])
                if v is not None:
                    heapq.heappush(heap, (v >> 32, pos, v & 0xFFFFFFFF))
        return [c[k] for k in range(n) if alive[k]]

    def _initial_symbols(self, word: str) -> list[int]:
        """BPE::merge_word's symbol construction (prefix/suffix, byte fallback, unk)."""
        vocab = self._vocab
        syms: list[int] = []
        unk: list[int] | None = None  # [unk_id] pending
        last = len(word) - 1
        for idx, ch in enumerate(word):
            s = ch
            if idx > 0 and self._prefix:
                s = self._prefix + s
            if idx == last and self._suffix:
                s = s + self._suffix
            tid = vocab.get(s)
            if tid is not None:
                if unk is not None:
                    syms.append(unk[0])
                    unk = None
                syms.append(tid)
                continue
            if self._byte_fallback:
                fb = [vocab.get(f"<0x{b:02X}>") for b in s.encode("utf-8")]
                if all(x is not None for x in fb):
                    syms.extend(x for x in fb if x is not None)
                    continue
            if self._unk_token is not None:
                unk_id = vocab.get(self._unk_token)
                if unk_id is None:
                    raise ValueError(f"unk token {self._unk_token!r} not in vocabulary")
                if unk is not None and not self._fuse_unk:
                    syms.append(unk[0])
                unk = [unk_id]
        if unk is not None:
            syms.append(unk[0])
        return syms

    # -- decoding ----------------------------------------------------------------------
    def _id_token_for_decode(self, tid: int) -> str | None:
        if tid in self._added_r:
            return self._added_norm_cache.get(tid, self._added_r[tid].content)
        return self._vocab_r.get(tid)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``, identical to ``tokenizers``' ``decode`` (invalid UTF-8 -> U+FFFD)."""
        tokens: list[str] = []
        specials = self._special_contents
        for tid in ids:
            tok = self._id_token_for_decode(int(tid))
            if tok is None:
                continue
            if skip_special_tokens and tok in specials:
                continue
            tokens.append(tok)
        if self._decoder is None:
            return " ".join(tokens)
        return "".join(self._decoder(tokens))

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes a token stands for (byte-level mapping undone; added tokens: UTF-8).

        Raises ``KeyError`` for an unknown id.
        """
        if token_id in self._added_r:
            return self._added_r[token_id].content.encode("utf-8")
        tok = self._vocab_r[token_id]
        if self._is_byte_level:
            try:
                return bytes([_CHAR_BYTES[c] for c in tok])
            except KeyError:
                return tok.encode("utf-8")
        if self._byte_fallback:
            b = _byte_token(tok)
            if b is not None:
                return bytes([b])
        return tok.replace("\u2581", " ").encode("utf-8")

    # -- vocabulary --------------------------------------------------------------------
    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (added tokens first, then the model vocabulary)."""
        tid = self._added_map.get(token)
        return tid if tid is not None else self._vocab.get(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id (added tokens first, then the model vocabulary)."""
        tok = self._added_r.get(token_id)
        if tok is not None:
            return self._added_norm_cache.get(token_id, tok.content)
        return self._vocab_r.get(token_id)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added tokens (``get_vocab_size(True)``)."""
        overlap = sum(1 for t in self._added_map if t in self._vocab)
        return len(self._vocab) + len(self._added_map) - overlap


def load_tokenizer(model_dir: str | os.PathLike[str]) -> Tokenizer:
    """Load ``model_dir/tokenizer.json``."""
    return Tokenizer.from_file(os.path.join(os.fspath(model_dir), "tokenizer.json"))
