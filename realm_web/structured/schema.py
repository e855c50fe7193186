"""JSON Schema -> a grammar node (ast.py) whose every string parses as JSON and validates.

Supported: `type` (one or a list), `enum`, `const`, `anyOf`, `oneOf` (its branches must not
overlap for the output to be valid: a discriminated union's do not), `allOf` of one schema,
`$ref` within the document (`#`, `#/$defs/...`, `#/definitions/...`, any JSON pointer;
recursion is unrolled to MAX_DEPTH levels), `nullable`; objects: `properties` (emitted in the
schema's order), `required`, `additionalProperties` (a schema, true or false; extra properties
are generated only when an object declares no properties); arrays: `items`, `prefixItems` (and
draft-4 tuple `items`), `minItems`, `maxItems`; strings: `minLength`, `maxLength`, `pattern`
(a whole-string regex, see ast.parse_regex), `format` (date, time, date-time, uuid, ipv4,
email, uri; others are annotations); numbers and integers: `minimum`, `maximum`,
`exclusiveMinimum`, `exclusiveMaximum` (exact for decimal bounds: a `number` between 0.1
and 0.25 takes 0.1, 0.2 and 0.25 and nothing outside). Annotations (`title`, `description`, `default`, `examples`, ...) are
ignored. Any other keyword is a SchemaError naming it and where it is.

Whitespace between tokens is limited to one space, or a newline and up to 16 spaces, so a
model cannot pad forever; numbers have at most 16 digits before and after the point.
"""
from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from .ast import (DIGIT, EMPTY, NOTHING, Alt, Bytes, Cat, Cls, Join, Lit, Node, Ref, RegexError, Rep, alt, cat, chars,
                  cls, normalize, opt, parse_regex)

MAX_DEPTH = 4  # nested levels of a recursive $ref, and of free-form JSON values
MAX_LENGTH = 500  # largest minLength / maxLength / minItems / maxItems taken

ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly",
               "$schema", "$id", "id", "$defs", "definitions", "discriminator", "strict", "contentMediaType",
               "contentEncoding", "$anchor", "x-order"}
TYPE_KEYS = {
    "string": {"minLength", "maxLength", "pattern", "format"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems"},
    "boolean": set(), "null": set(),
}
GENERAL = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "nullable"}
ALLOWED_FALSE = {"uniqueItems": False, "unevaluatedProperties": None}


class SchemaError(ValueError):
    """A schema this compiler does not take; `path` is where (a JSON pointer into the schema)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{message} (at {path or '#'})")
        self.path = path


# -- the JSON lexicon -------------------------------------------------------------------------
WS = opt(alt(Lit(" "), cat(Lit("\n"), Rep(Lit(" "), 0, 16))))
SEP = cat(WS, Lit(","), WS)
COLON = cat(WS, Lit(":"), WS)
HEX = cls((0x30, 0x39), (0x41, 0x46), (0x61, 0x66))
_HEX_NOT_D = cls((0x30, 0x39), (0x41, 0x43), (0x45, 0x46), (0x61, 0x63), (0x65, 0x66))
U_ESCAPE = cat(Lit("\\u"), alt(cat(_HEX_NOT_D, HEX, HEX, HEX), cat(chars("dD"), cls((0x30, 0x37)), HEX, HEX)))
RAW = normalize([(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x10FFFF)])  # what a JSON string holds unescaped
CHAR = alt(Cls(RAW), cat(Lit("\\"), chars('"\\/bfnrt')), U_ESCAPE)
STRING = cat(Lit('"'), Rep(CHAR, 0, None), Lit('"'))
DIGITS = Cls(DIGIT)
NAT = alt(Lit("0"), cat(cls((0x31, 0x39)), Rep(DIGITS, 0, 15)))
FRACTION = opt(cat(Lit("."), Rep(DIGITS, 1, 16)))
EXPONENT = opt(cat(chars("eE"), opt(chars("+-")), Rep(DIGITS, 1, 3)))
NUMBER = cat(opt(Lit("-")), NAT, FRACTION, EXPONENT)
INTEGER = cat(opt(Lit("-")), NAT)
BOOLEAN = alt(Lit("true"), Lit("false"))
NULL = Lit("null")
_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}

_any: dict[int, Node] = {}


def any_value(depth: int = 0) -> Node:
    """Any JSON value, containers nested at most MAX_DEPTH deep."""
    if depth not in _any:
        scalars = [STRING, NUMBER, BOOLEAN, NULL]
        if depth < MAX_DEPTH:
            inner = Ref(f"any{depth + 1}", lambda: any_value(depth + 1))
            scalars += [free_object(inner), array_of(inner, 0, None)]
        _any[depth] = alt(*scalars)
    return _any[depth]


def free_object(value: Node) -> Node:
    member = cat(STRING, COLON, value)
    return cat(Lit("{"), WS, opt(Join(member, SEP, 1, None)), WS, Lit("}"))


def array_of(item: Node, lo: int, hi: int | None) -> Node:
    body = Join(item, SEP, lo, hi)
    return cat(Lit("["), WS, body, WS, Lit("]")) if lo else cat(Lit("["), WS, opt(body) if hi != 0 else EMPTY, WS, Lit("]"))


def json_literal(value: Any) -> Node:
    return Lit(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def in_json_string(node: Node) -> Node:
    """A node over a string's characters -> the same strings as JSON string contents (escaped)."""
    if isinstance(node, Lit):
        return Lit("".join(_ESC.get(c, c) if c in _ESC or c >= " " else f"\\u{ord(c):04x}" for c in node.text))
    if isinstance(node, Cls):
        raw = normalize([(max(lo, a), min(hi, b)) for lo, hi in node.ranges for a, b in RAW])
        special = [chr(c) for lo, hi in node.ranges for c in range(lo, min(hi, 0x5C) + 1)
                   if c < 0x20 or c in (0x22, 0x5C)]
        return alt(Cls(raw), *(in_json_string(Lit(c)) for c in special))
    if isinstance(node, Cat):
        return cat(*(in_json_string(x) for x in node.items))
    if isinstance(node, Alt):
        return alt(*(in_json_string(x) for x in node.items)) if node.items else NOTHING
    if isinstance(node, Rep):
        return Rep(in_json_string(node.item), node.min, node.max)
    if isinstance(node, Join):
        return Join(in_json_string(node.item), in_json_string(node.sep), node.min, node.max)
    if isinstance(node, Bytes):
        raise TypeError("free bytes inside a JSON string")
    if isinstance(node, Ref):
        return Ref(node.key, lambda: in_json_string(node.make()))
    raise TypeError(f"not a grammar node: {node!r}")


_FORMATS = {
    "date": r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    "time": r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])",
    "uuid": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "ipv4": r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    "email": r"[a-zA-Z0-9._%+-]{1,32}@[a-zA-Z0-9-]{1,32}(\.[a-zA-Z0-9-]{1,16}){1,3}",
    "uri": r"[a-zA-Z][a-zA-Z0-9+.-]{0,15}://[a-zA-Z0-9._~%!$&'()*+,;=:@/?#-]{1,200}",
}
_FORMATS["date-time"] = _FORMATS["date"] + "T" + _FORMATS["time"]


# -- numbers in a range -------------------------------------------------------------------------
def _same_length(a: str, b: str) -> Node:
    """Digit strings of one length from a to b (a <= b)."""
    if len(a) == 1:
        return cls((ord(a), ord(b)))
    if a[0] == b[0]:
        return cat(Lit(a[0]), _same_length(a[1:], b[1:]))
    n = len(a) - 1
    parts: list[Node] = []
    if a[1:] == "0" * n:
        lo_first = a[0]
    else:
        parts.append(cat(Lit(a[0]), _same_length(a[1:], "9" * n)))
        lo_first = chr(ord(a[0]) + 1)
    hi_full = b[1:] == "9" * n
    hi_first = b[0] if hi_full else chr(ord(b[0]) - 1)
    if lo_first <= hi_first:
        parts.append(cat(cls((ord(lo_first), ord(hi_first))), Rep(DIGITS, n, n)))
    if not hi_full:
        parts.append(cat(Lit(b[0]), _same_length("0" * n, b[1:])))
    return alt(*parts)


def nat_range(lo: int, hi: int | None) -> Node:
    """The decimal spellings (no leading zeros) of the integers lo..hi (hi None: up to 16 digits)."""
    top = 10 ** 16 - 1 if hi is None else hi
    if lo > top:
        return NOTHING
    parts = []
    for length in range(len(str(lo)), len(str(top)) + 1):
        a = max(lo, 10 ** (length - 1) if length > 1 else 0)
        b = min(top, 10 ** length - 1)
        if a <= b:
            parts.append(_same_length(str(a), str(b)))
    return alt(*parts)


def int_range(lo: int | None, hi: int | None) -> Node:
    """Integers in [lo, hi] (None: unbounded on that side)."""
    parts = []
    if lo is None or lo < 0:  # negatives
        m_lo = 1 if hi is None or hi >= 0 else -hi
        parts.append(cat(Lit("-"), nat_range(m_lo, None if lo is None else -lo)))
    if hi is None or hi >= 0:
        parts.append(nat_range(0 if lo is None else max(lo, 0), hi))
    return alt(*parts)


Bound = tuple[Decimal, bool]  # a decimal and whether it is exclusive


def _digits(x: Decimal) -> tuple[int, str]:
    """A non-negative decimal as its integer part and its fraction's digits (no trailing 0s)."""
    i, _, f = format(x, "f").partition(".")
    return int(i), f.rstrip("0")


def _fraction(lo: tuple[str, bool] | None, hi: tuple[str, bool] | None, n: int) -> tuple[Node, bool]:
    """Strings of 1..n digits D whose value 0.D lies within the bounds on 0.D (digits without
    trailing zeros, exclusive?; None: no bound), as (node, whether the empty string, of value
    0, is within them too). Digit by digit: a first digit strictly inside the bounds' first
    digits frees the rest; one equal to a bound's carries that bound on to the rest."""
    key = (lo, hi, n)
    got = _fractions.get(key)
    if got is not None:
        return got
    empty = (lo is None or (lo[0] == "" and not lo[1])) and (hi is None or not (hi[0] == "" and hi[1]))
    parts: list[Node] = []
    if n > 0:
        l0 = int(lo[0][0]) if lo and lo[0] else 0
        h0 = int(hi[0][0]) if hi and hi[0] else (9 if hi is None else 0)
        groups: dict[tuple[Any, Any], list[int]] = {}
        for d in range(l0 if lo else 0, h0 + 1):
            rest_lo = (lo[0][1:], lo[1]) if lo and d == l0 else None
            rest_hi = (hi[0][1:], hi[1]) if hi and d == h0 else None
            groups.setdefault((rest_lo, rest_hi), []).append(d)
        for (rest_lo, rest_hi), ds in groups.items():
            if rest_lo is None and rest_hi is None:
                rest: Node = Rep(DIGITS, 0, n - 1)
            else:
                node, has_empty = _fraction(rest_lo, rest_hi, n - 1)
                if node is NOTHING and not has_empty:
                    continue
                rest = alt(EMPTY, node) if has_empty and node is not NOTHING else EMPTY if has_empty else node
            parts.append(cat(cls((0x30 + ds[0], 0x30 + ds[-1])), rest))
    got = _fractions[key] = (alt(*parts) if parts else NOTHING, empty)
    return got


_fractions: dict[tuple[Any, ...], tuple[Node, bool]] = {}


def _with_fraction(lo: tuple[str, bool] | None, hi: tuple[str, bool] | None) -> Node:
    """The optional `.digits` of a JSON number whose fraction lies within the bounds."""
    node, empty = _fraction(lo, hi, 16)
    dotted = cat(Lit("."), node) if node is not NOTHING else NOTHING
    return alt(EMPTY, dotted) if empty and dotted is not NOTHING else EMPTY if empty else dotted


def magnitude(lo: Bound, hi: Bound | None) -> Node:
    """Unsigned decimals (an integer part, an optional fraction) within [lo, hi] (lo >= 0;
    exclusive ends as flagged; hi None: no upper bound)."""
    li, lf = _digits(lo[0])
    if hi is not None and (hi[0] < lo[0] or (hi[0] == lo[0] and (hi[1] or lo[1]))):
        return NOTHING
    if hi is None:
        return alt(cat(nat_range(li + 1, None), FRACTION), cat(Lit(str(li)), _with_fraction((lf, lo[1]), None)))
    hi_i, hf = _digits(hi[0])
    if hi_i >= 10 ** 16:
        hi_i, hf, hi = 10 ** 16 - 1, "9" * 16, (Decimal(10 ** 16 - 1), False)
    if li == hi_i:
        return cat(Lit(str(li)), _with_fraction((lf, lo[1]), (hf, hi[1])))
    parts = [cat(Lit(str(li)), _with_fraction((lf, lo[1]), None))]
    if li + 1 <= hi_i - 1:
        parts.append(cat(nat_range(li + 1, hi_i - 1), FRACTION))
    parts.append(cat(Lit(str(hi_i)), _with_fraction(None, (hf, hi[1]))))
    return alt(*parts)


def number_range(lo: Bound | None, hi: Bound | None) -> Node:
    """JSON numbers (no exponent) within the bounds (None: unbounded on that side), exactly:
    the bounds are decimals. Negatives are '-' and a magnitude (never '-0')."""
    zero = Decimal(0)
    parts = []
    if hi is None or hi[0] > zero or (hi[0] == zero and not hi[1]):  # v >= 0
        at_least = (zero, False) if lo is None or lo[0] < zero else lo
        parts.append(magnitude(at_least, hi))
    if lo is None or lo[0] < zero:  # v < 0: |v| within (max(-hi, 0), -lo]
        below: Bound = (-hi[0], hi[1]) if hi is not None and hi[0] < zero else (zero, True)
        parts.append(cat(Lit("-"), magnitude(below, None if lo is None else (-lo[0], lo[1]))))
    return alt(*parts)


# -- the compiler -----------------------------------------------------------------------------
class SchemaCompiler:
    """One schema document: resolves its $refs, unrolls recursion, builds the node."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.depth: dict[str, int] = {}

    def compile(self) -> Node:
        return self.node(self.root, "#")

    def node(self, s: Any, path: str) -> Node:
        if s is True or s == {}:
            return any_value()
        if s is False:
            return NOTHING
        if not isinstance(s, dict):
            raise SchemaError("a schema must be an object or a boolean", path)
        for k, v in s.items():
            if k in ANNOTATIONS or k in GENERAL or any(k in ks for ks in TYPE_KEYS.values()):
                continue
            if k in ALLOWED_FALSE and (v is False or v is None or (k == "unevaluatedProperties" and v is False)):
                continue
            raise SchemaError(f"the keyword {k!r} is not supported", f"{path}/{k}")
        if "$ref" in s:
            extra = set(s) - ANNOTATIONS - {"$ref"}
            if extra:
                raise SchemaError(f"'$ref' next to {sorted(extra)} is not supported", path)
            return self.ref(s["$ref"], path)
        if "allOf" in s:
            subs = s["allOf"]
            if not isinstance(subs, list) or len(subs) != 1:
                raise SchemaError("'allOf' is supported with exactly one schema", f"{path}/allOf")
            rest = {k: v for k, v in s.items() if k != "allOf" and k not in ANNOTATIONS}
            if rest:
                raise SchemaError(f"'allOf' next to {sorted(rest)} is not supported", path)
            return self.node(subs[0], f"{path}/allOf/0")
        for key in ("anyOf", "oneOf"):
            if key in s:
                subs = s[key]
                if not isinstance(subs, list) or not subs:
                    raise SchemaError(f"'{key}' must be a non-empty list of schemas", f"{path}/{key}")
                rest = {k: v for k, v in s.items() if k != key and k not in ANNOTATIONS}
                branches = [self.node({**rest, **b} if rest and isinstance(b, dict) else b, f"{path}/{key}/{i}")
                            for i, b in enumerate(subs)]
                return alt(*branches)
        if "const" in s:
            return json_literal(s["const"])
        if "enum" in s:
            vals = s["enum"]
            if not isinstance(vals, list) or not vals:
                raise SchemaError("'enum' must be a non-empty list", f"{path}/enum")
            return alt(*(json_literal(v) for v in vals))
        types = s.get("type")
        if types is None:  # no type: the types its keywords belong to, else anything
            types = [t for t, ks in TYPE_KEYS.items() if ks & set(s) and t != "integer"]
            if not types:
                return any_value()
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types or any(t not in TYPE_KEYS for t in types):
            raise SchemaError(f"'type' must be one of {sorted(TYPE_KEYS)} or a list of them, got {types!r}",
                              f"{path}/type")
        if s.get("nullable") is True and "null" not in types:
            types = [*types, "null"]
        if "integer" in types and "number" in types:
            types = [t for t in types if t != "integer"]
        return alt(*(self.typed(t, s, path) for t in dict.fromkeys(types)))

    def ref(self, ref: Any, path: str) -> Node:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError("only '$ref's within the schema ('#...') are supported", f"{path}/$ref")
        target = self.root
        for part in (p for p in ref[1:].split("/") if p):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise SchemaError(f"'$ref' {ref!r} points at nothing", f"{path}/$ref")
        level = self.depth.get(ref, 0)
        if level > MAX_DEPTH:
            return NOTHING  # deeper than we unroll: this branch is not taken
        self.depth[ref] = level + 1
        try:
            return self.node(target, ref)
        finally:
            self.depth[ref] = level

    def typed(self, t: str, s: dict[str, Any], path: str) -> Node:
        if t == "string":
            return self.string(s, path)
        if t in ("number", "integer"):
            return self.number(t, s, path)
        if t == "boolean":
            return BOOLEAN
        if t == "null":
            return NULL
        if t == "object":
            return self.object(s, path)
        return self.array(s, path)

    def _count(self, s: dict[str, Any], key: str, path: str, default: int | None) -> int | None:
        v = s.get(key, default)
        if v is None:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise SchemaError(f"'{key}' must be a non-negative integer", f"{path}/{key}")
        if v > MAX_LENGTH:
            raise SchemaError(f"'{key}' above {MAX_LENGTH} is not supported", f"{path}/{key}")
        return v

    def string(self, s: dict[str, Any], path: str) -> Node:
        lo = self._count(s, "minLength", path, 0) or 0
        hi = self._count(s, "maxLength", path, None)
        if hi is not None and hi < lo:
            return NOTHING
        pattern, fmt = s.get("pattern"), s.get("format")
        if pattern is not None:
            if not isinstance(pattern, str):
                raise SchemaError("'pattern' must be a string", f"{path}/pattern")
            if lo or hi is not None:
                raise SchemaError("'pattern' together with 'minLength'/'maxLength' is not supported", path)
            try:
                body = parse_regex(pattern)
            except RegexError as e:
                raise SchemaError(f"'pattern': {e}", f"{path}/pattern") from None
            return cat(Lit('"'), in_json_string(body), Lit('"'))
        if isinstance(fmt, str) and fmt in _FORMATS and not lo and hi is None:
            return cat(Lit('"'), in_json_string(parse_regex(_FORMATS[fmt])), Lit('"'))
        return cat(Lit('"'), Rep(CHAR, lo, hi), Lit('"'))

    def number(self, t: str, s: dict[str, Any], path: str) -> Node:
        lo: float | None = None
        hi: float | None = None
        lo_x = hi_x = False
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            v = s.get(key)
            if v is None:
                continue
            if isinstance(v, bool) and key.startswith("exclusive"):  # draft 4: a flag on minimum / maximum
                if key == "exclusiveMinimum":
                    lo_x = v
                else:
                    hi_x = v
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise SchemaError(f"'{key}' must be a number", f"{path}/{key}")
            if key == "minimum":
                lo = v if lo is None else max(lo, v)
            elif key == "maximum":
                hi = v if hi is None else min(hi, v)
            elif key == "exclusiveMinimum":
                lo, lo_x = (v, True) if lo is None or v >= lo else (lo, lo_x)
            else:
                hi, hi_x = (v, True) if hi is None or v <= hi else (hi, hi_x)
        if lo is None and hi is None:
            return INTEGER if t == "integer" else NUMBER
        if max(abs(lo or 0), abs(hi or 0)) >= 10 ** 16:
            raise SchemaError("bounds beyond 16 digits are not supported", path)
        if t == "number":
            return number_range(None if lo is None else (Decimal(repr(lo)), lo_x),
                                None if hi is None else (Decimal(repr(hi)), hi_x))
        ilo = None if lo is None else (math.floor(lo) + 1 if lo_x and float(lo).is_integer() else math.ceil(lo))
        ihi = None if hi is None else (math.ceil(hi) - 1 if hi_x and float(hi).is_integer() else math.floor(hi))
        if ilo is not None and ihi is not None and ilo > ihi:
            return NOTHING
        return int_range(ilo, ihi)

    def object(self, s: dict[str, Any], path: str) -> Node:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError("'properties' must be an object", f"{path}/properties")
        required = s.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError("'required' must be a list of strings", f"{path}/required")
        extra = s.get("additionalProperties", True)
        if not isinstance(extra, (bool, dict)):
            raise SchemaError("'additionalProperties' must be a schema or a boolean", f"{path}/additionalProperties")
        if not props and not required:
            if extra is False:
                return cat(Lit("{"), WS, Lit("}"))
            value = any_value(1) if extra is True else self.node(extra, f"{path}/additionalProperties")
            return free_object(value)
        names = list(props) + [r for r in dict.fromkeys(required) if r not in props]
        need = set(required)
        values: list[Node] = []
        for name in names:
            if name in props:
                values.append(self.node(props[name], f"{path}/properties/{name}"))
            elif extra is False:
                return NOTHING  # required, yet not allowed
            else:
                values.append(any_value(1) if extra is True else self.node(extra, f"{path}/additionalProperties"))
        members = [cat(json_literal(n), COLON, v) for n, v in zip(names, values)]
        memo: dict[tuple[int, bool], Node] = {}

        def tail(i: int, started: bool) -> Node:  # properties i.. after `started` ones were written
            key = (i, started)
            if key not in memo:
                if i == len(names):
                    memo[key] = EMPTY
                else:
                    emit = cat(SEP, members[i], tail(i + 1, True)) if started else cat(members[i], tail(i + 1, True))
                    memo[key] = emit if names[i] in need else alt(emit, tail(i + 1, started))
            return memo[key]

        for i in range(len(names), -1, -1):  # bottom-up: no deep recursion for wide objects
            tail(i, True)
            tail(i, False)
        return cat(Lit("{"), WS, tail(0, False), WS, Lit("}"))

    def array(self, s: dict[str, Any], path: str) -> Node:
        lo = self._count(s, "minItems", path, 0) or 0
        hi = self._count(s, "maxItems", path, None)
        items, prefix = s.get("items"), s.get("prefixItems")
        if isinstance(items, list):  # draft 4 tuple form
            prefix, items = items, s.get("additionalItems", True)
        if prefix is not None:
            if not isinstance(prefix, list):
                raise SchemaError("'prefixItems' must be a list of schemas", f"{path}/prefixItems")
            heads = [self.node(x, f"{path}/prefixItems/{i}") for i, x in enumerate(prefix)]
            rest = NOTHING if items is False else any_value(1) if items in (None, True) else \
                self.node(items, f"{path}/items")
            return self._tuple(heads, rest, lo, hi)
        item = any_value(1) if items in (None, True) else NOTHING if items is False else self.node(items, f"{path}/items")
        if hi is not None and hi < lo:
            return NOTHING
        return array_of(item, lo, hi)

    def _tuple(self, heads: list[Node], rest: Node, lo: int, hi: int | None) -> Node:
        """[h0, h1, ..., then rest items]: at least `lo`, at most `hi` in all."""
        n = len(heads)
        top = n if rest is NOTHING else hi
        if top is not None and hi is not None:
            top = min(top, hi)
        if top is not None and top < lo:
            return NOTHING
        # k = how many items: build the alternatives for k from lo.. (heads are positional)
        options: list[Node] = []
        for k in range(lo, min(n, top if top is not None else n) + 1):
            options.append(_joined(heads[:k]))
        if rest is not NOTHING and (top is None or top > n):
            more_lo = max(lo - n, 1)
            more_hi = None if top is None else top - n
            tail = Join(rest, SEP, more_lo, more_hi)
            options.append(cat(_joined(heads), SEP, tail) if n else tail)
        body = alt(*options) if options else NOTHING
        return cat(Lit("["), WS, body, WS, Lit("]"))


def _joined(items: list[Node]) -> Node:
    out: list[Node] = []
    for i, x in enumerate(items):
        if i:
            out.append(SEP)
        out.append(x)
    return cat(*out) if out else EMPTY


def compile_schema(schema: Any) -> Node:
    """A JSON schema -> its grammar node; SchemaError for what is not supported."""
    if not isinstance(schema, (dict, bool)):
        raise SchemaError("a JSON schema must be an object")
    return SchemaCompiler(schema).compile()


def json_object() -> Node:
    """Any JSON object (response_format {"type": "json_object"})."""
    return free_object(any_value(1))

