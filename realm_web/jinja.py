"""A small, sandboxed interpreter for the subset of Jinja2 that chat templates use.

Standard library only (it runs in Pyodide, where jinja2 is not available), and it never
``eval``s or ``exec``s Python: the source is lexed into tokens, a recursive-descent parser
turns the grammar into a tree of small closures (one per node), and rendering walks that tree.

The environment is the one Hugging Face ``transformers`` renders chat templates with:
``trim_blocks=True, lstrip_blocks=True``, no autoescaping, the ``loopcontrols`` extension
(``break``/``continue``), ``tojson`` with ``ensure_ascii=False`` and the globals
``raise_exception``, ``strftime_now``, ``namespace`` and ``dict``.

Sandbox: templates read attributes only from an allow-list (pure ``str`` methods,
``dict.get/items/keys/values``, loop and namespace fields); any other ``x.name`` falls back
to ``x["name"]`` as in Jinja, else it is undefined. Nothing can mutate its inputs.
"""
from __future__ import annotations

import json
import math
import numbers
import operator
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, NamedTuple, NoReturn

__all__ = ["Namespace", "SecurityError", "Template", "TemplateError", "TemplateSyntaxError",
           "Undefined", "UndefinedError", "tokenize"]


# ---------------------------------------------------------------------------------------- errors
class TemplateError(Exception):
    """An error while compiling or rendering a template; ``lineno`` is its line, when known."""

    def __init__(self, message: str, lineno: int | None = None) -> None:
        super().__init__(message)
        self.message, self.lineno = message, lineno


class TemplateSyntaxError(TemplateError):
    """The template source is invalid; the message names the line."""

    def __init__(self, message: str, lineno: int) -> None:
        super().__init__(f"{message} (line {lineno})", lineno)


class UndefinedError(TemplateError):
    """An undefined value was used where a real value is needed."""


class SecurityError(TemplateError):
    """The template tried something the sandbox forbids."""


class Undefined:
    """Jinja's default ``Undefined``: prints as ``""``, is falsy and iterates as empty; using it
    for arithmetic, calls, items or attributes raises :class:`UndefinedError`."""

    __slots__ = ("_exc", "_hint")

    def __init__(self, hint: str, exc: type[TemplateError] = UndefinedError) -> None:
        self._hint, self._exc = hint, exc

    def _fail(self, *args: object, **kwargs: object) -> NoReturn:
        raise self._exc(self._hint)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._fail()

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _fail
    __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = _fail
    __pos__ = __neg__ = __call__ = __getitem__ = __int__ = __float__ = _fail
    __lt__ = __le__ = __gt__ = __ge__ = _fail

    __str__ = lambda self: ""  # the trivial protocol, one line each
    __repr__ = lambda self: "Undefined"
    __len__ = lambda self: 0
    __bool__ = lambda self: False
    __iter__ = lambda self: iter(())
    __eq__ = lambda self, other: type(self) is type(other)
    __ne__ = lambda self, other: type(self) is not type(other)
    __hash__ = lambda self: id(type(self))


def _type_repr(obj: object) -> str:
    cls = type(obj)
    if obj is None:
        return "None"
    return f"{cls.__name__} object" if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__} object"


def _missing(obj: object, name: object) -> Undefined:
    what = "attribute" if isinstance(name, str) else "element"
    return Undefined(f"{_type_repr(obj)!r} has no {what} {name!r}")


# ---------------------------------------------------------------------------------------- lexer
@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # data var_begin var_end block_begin block_end name string int float op eof
    value: Any
    line: int


_ROOT_RE = re.compile(r"(.*?)(?:(?P<raw>\{%(-|\+|)\s*raw\s*(?:-%\}\s*|%\}))|(?P<comment>\{#(-|\+|))"
                      r"|(?P<block>\{%(-|\+|))|(?P<var>\{\{(-|\+|)))", re.DOTALL)
_COMMENT_END_RE = re.compile(r"(.*?)(?:\+#\}|-#\}\s*|#\}\n?)", re.DOTALL)
_RAW_END_RE = re.compile(r"(.*?)\{%(-|\+|)\s*endraw\s*(?:\+%\}|-%\}\s*|%\}\n?)", re.DOTALL)
_END_RE = {"block": re.compile(r"\+%\}|-%\}\s*|%\}\n?"), "var": re.compile(r"-\}\}\s*|\}\}")}
_TOKEN_RE = re.compile(r"""(?P<ws>\s+)
  | (?P<float>(?<!\.)(?:\d+_)*\d+(?:(?:\.(?:\d+_)*\d+)?e[+\-]?(?:\d+_)*\d+|\.(?:\d+_)*\d+))
  | (?P<int>0b(?:_?[01])+|0o(?:_?[0-7])+|0x(?:_?[\da-f])+|[1-9](?:_?\d)*|0(?:_?0)*)
  | (?P<name>[^\W\d]\w*)
  | (?P<string>'[^'\\]*(?:\\.[^'\\]*)*'|"[^"\\]*(?:\\.[^"\\]*)*")
  | (?P<op>//|\*\*|==|!=|>=|<=|[-+/*%~\[\](){}<>=.:|,;])""", re.VERBOSE | re.DOTALL | re.IGNORECASE)
_WS_RE = re.compile(r"\s+")
_CLOSING = {"(": ")", "[": "]", "{": "}"}


class _Lexer:
    """Mirrors jinja2's lexer, including ``trim_blocks``/``lstrip_blocks`` and ``-``/``+``."""

    def __init__(self, source: str) -> None:
        source = re.sub(r"\r\n?", "\n", source)
        self.src = source.removesuffix("\n")  # keep_trailing_newline=False
        self.pos, self.line, self.line_starting = 0, 1, True
        self.tokens: list[Token] = []

    def run(self) -> list[Token]:
        while self.pos < len(self.src):
            m = _ROOT_RE.match(self.src, self.pos)
            if m is None:
                self._emit("data", self.src[self.pos:])
                break
            kind = next(k for k in ("raw", "comment", "block", "var") if m.group(k) is not None)
            sign = m.group(_ROOT_RE.groupindex[kind] + 1)
            self._emit("data", self._strip_before(m.group(1), sign, kind != "var"))
            self._move(m)
            if kind == "raw":
                self._raw()
            elif kind == "comment":
                self._move(self._match(_COMMENT_END_RE, "Missing end of comment tag"))
            else:
                self._tag(kind)
        self.tokens.append(Token("eof", None, self.line))
        return self.tokens

    def _strip_before(self, text: str, sign: str, lstrip: bool) -> str:
        if sign == "-":
            return text.rstrip()
        if sign != "+" and lstrip:  # lstrip_blocks: drop a block tag's indentation
            start = text.rfind("\n") + 1
            if (start > 0 or self.line_starting) and _WS_RE.fullmatch(text, start):
                return text[:start]
        return text

    def _emit(self, kind: str, value: Any, line: int | None = None) -> None:
        if kind != "data" or value:
            self.tokens.append(Token(kind, value, self.line if line is None else line))

    def _move(self, m: re.Match[str]) -> None:
        self.line += self.src.count("\n", self.pos, m.end())
        self.pos, self.line_starting = m.end(), m.group()[-1:] == "\n"

    def _match(self, pattern: re.Pattern[str], error: str) -> re.Match[str]:
        m = pattern.match(self.src, self.pos)
        if m is None:
            raise TemplateSyntaxError(error, self.line)
        return m

    def _raw(self) -> None:
        m, line = self._match(_RAW_END_RE, "Missing end of raw directive"), self.line
        text = self._strip_before(m.group(1), m.group(2), True)
        self._move(m)
        self._emit("data", text, line)

    def _tag(self, kind: str) -> None:
        self._emit(f"{kind}_begin", None)
        stack: list[str] = []
        while True:
            end = None if stack else _END_RE[kind].match(self.src, self.pos)
            if end is not None:
                self._emit(f"{kind}_end", None)
                self._move(end)
                return
            if self.pos >= len(self.src):
                raise TemplateSyntaxError("unexpected end of template, the tag was never closed", self.line)
            m = self._match(_TOKEN_RE, f"unexpected char {self.src[self.pos:self.pos + 1]!r}")
            self._token(m.lastgroup or "", m.group(), stack)
            self._move(m)

    def _token(self, kind: str, text: str, stack: list[str]) -> None:
        if text in _CLOSING and kind == "op":
            stack.append(_CLOSING[text])
        elif text in (")", "]", "}") and kind == "op":
            expected = stack.pop() if stack else None
            if expected != text:
                extra = f", expected {expected!r}" if expected else ""
                raise TemplateSyntaxError(f"unexpected {text!r}{extra}", self.line)
        if kind == "int":
            self._emit(kind, int(text.replace("_", ""), 0))
        elif kind == "float":
            self._emit(kind, float(text.replace("_", "")))
        elif kind == "string":
            self._emit(kind, text[1:-1].encode("ascii", "backslashreplace").decode("unicode-escape"))
        elif kind != "ws":
            self._emit(kind, text)


def tokenize(source: str) -> list[Token]:
    """Split template source into tokens, applying Jinja's whitespace control."""
    return _Lexer(source).run()


# ------------------------------------------------------------------------------ runtime objects
class Frame:
    """A scope: its own variables plus the enclosing scope."""

    __slots__ = ("parent", "vars")

    def __init__(self, parent: Frame | None, variables: dict[str, Any] | None = None) -> None:
        self.vars: dict[str, Any] = {} if variables is None else variables
        self.parent = parent

    def lookup(self, name: str) -> Any:
        frame: Frame | None = self
        while frame is not None:
            if name in frame.vars:
                return frame.vars[name]
            frame = frame.parent
        return Undefined(f"{name!r} is undefined")


class _TemplateObject:
    """A runtime object whose ``template_attrs`` templates may read."""

    template_attrs: frozenset[str] = frozenset()


class Namespace(_TemplateObject):
    """``namespace(...)``: the one object templates may set attributes on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.attrs: dict[str, Any] = {}
        for key, value in dict(*args, **kwargs).items():
            self.set(key, value)

    def set(self, name: str, value: Any) -> None:
        if not isinstance(name, str) or name.startswith("_"):
            raise SecurityError(f"Chat templates cannot store underscore-prefixed attributes on a "
                                f"namespace, but got {name!r}. Please rename the attribute.")
        self.attrs[name] = value

    def __repr__(self) -> str:
        return f"<Namespace {self.attrs!r}>"


class LoopContext(_TemplateObject):
    """The ``loop`` variable of ``{% for %}``."""

    template_attrs = frozenset("index index0 revindex revindex0 first last length previtem nextitem "
                               "depth depth0 cycle".split())

    def __init__(self, items: list[Any], depth: int, recurse: Callable[[Any, int], str] | None) -> None:
        self.items, self.length, self.depth, self.depth0 = items, len(items), depth, depth - 1
        self.recurse = recurse

    def move(self, i: int) -> None:
        n = self.length
        self.index0, self.index, self.revindex0, self.revindex = i, i + 1, n - i - 1, n - i
        self.first, self.last = i == 0, i == n - 1
        self.previtem = self.items[i - 1] if i else Undefined("there is no previous item")
        self.nextitem = self.items[i + 1] if i + 1 < n else Undefined("there is no next item")

    def cycle(self, *args: Any) -> Any:
        if not args:
            raise TemplateError("no items for cycling given")
        return args[self.index0 % len(args)]

    def __call__(self, iterable: Any) -> str:
        if self.recurse is None:
            raise TemplateError("Tried to call non recursive loop. Maybe you forgot the 'recursive' modifier.")
        return self.recurse(iterable, self.depth + 1)


_STR_ATTRS = frozenset(
    "capitalize casefold center count endswith expandtabs find index isalnum isalpha isascii "
    "isdecimal isdigit isidentifier islower isnumeric isprintable isspace istitle isupper join "
    "ljust lower lstrip partition removeprefix removesuffix replace rfind rindex rjust rpartition "
    "rsplit rstrip split splitlines startswith strip swapcase title translate upper zfill".split())
_MAPPING_ATTRS = frozenset({"get", "items", "keys", "values", "copy"})
_SEQ_ATTRS = frozenset({"count", "index", "copy"})
_MUTATORS = frozenset("append clear extend insert pop popitem remove reverse setdefault sort update "
                      "fromkeys add discard".split())


class _SafeFormatter(string.Formatter):
    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        if "." in field_name or "[" in field_name:
            raise SecurityError("str.format() with attribute or item lookups is not allowed")
        return super().get_field(field_name, args, kwargs)


def _allowed_attr(obj: Any, name: str) -> tuple[bool, Any]:
    """``(True, value)`` when the sandbox lets templates read ``obj.name``."""
    if name.startswith("_"):
        return False, None
    if isinstance(obj, str):
        if name == "format":
            return True, lambda *a, **k: _SafeFormatter().vformat(obj, a, k)
        return (True, getattr(obj, name)) if name in _STR_ATTRS else (False, None)
    allowed: frozenset[str] = frozenset()
    if isinstance(obj, Mapping):
        allowed = _MAPPING_ATTRS
    elif isinstance(obj, (list, tuple)):
        allowed = _SEQ_ATTRS
    elif isinstance(obj, _TemplateObject):
        allowed = obj.template_attrs
    if name in allowed and hasattr(obj, name):
        return True, getattr(obj, name)
    if name in _MUTATORS and hasattr(obj, name):  # like ImmutableSandboxedEnvironment
        hint = f"access to attribute {name!r} of {_type_repr(obj)!r} is unsafe."
        return True, Undefined(hint, SecurityError)
    return False, None


def get_attr(obj: Any, name: str) -> Any:
    """``obj.name``: an allowed attribute, else ``obj[name]``, else undefined."""
    if isinstance(obj, Undefined):
        obj._fail()
    if isinstance(obj, Namespace):
        return obj.attrs[name] if name in obj.attrs else _missing(obj, name)
    found, value = _allowed_attr(obj, name)
    if found:
        return value
    try:
        return obj[name]
    except (TypeError, LookupError, AttributeError):
        return _missing(obj, name)


def get_item(obj: Any, key: Any) -> Any:
    """``obj[key]``: the item, else (for a string key) an allowed attribute, else undefined."""
    if isinstance(obj, Undefined):
        obj._fail()
    try:
        return obj[key]
    except (TypeError, LookupError, AttributeError):
        return get_attr(obj, key) if isinstance(key, str) else _missing(obj, key)


def _call(func: Any, args: Iterable[Any], kwargs: Mapping[str, Any]) -> Any:
    if isinstance(func, Undefined):
        func._fail()
    if not callable(func):
        raise TemplateError(f"{_type_repr(func)!r} is not callable")
    return func(*args, **kwargs)


def _to_str(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _raise_exception(message: Any) -> NoReturn:
    raise TemplateError(str(message))


def _safe_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > 100_000:
        raise SecurityError("Range too big. The sandbox blocks ranges larger than 100000.")
    return rng


def _make_dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    return dict(*args, **kwargs)


DEFAULT_GLOBALS: dict[str, Any] = {
    "range": _safe_range, "dict": _make_dict, "namespace": Namespace,
    "raise_exception": _raise_exception, "strftime_now": lambda fmt: datetime.now().strftime(fmt),
}


# ---------------------------------------------------------------------------- filters and tests
def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _attrgetter(attribute: Any, post: Callable[[Any], Any] | None = None,
                default: Any = None) -> Callable[[Any], Any]:
    """jinja2's ``make_attrgetter``: ``"a.0.b"`` walks items/attributes."""
    parts: list[Any] = [] if attribute is None else [attribute]
    if isinstance(attribute, str):
        parts = [int(p) if p.isdigit() else p for p in attribute.split(".")]

    def getter(item: Any) -> Any:
        for part in parts:
            item = get_item(item, part)
        if default is not None and isinstance(item, Undefined):
            item = default
        return post(item) if post is not None else item
    return getter


def _f_default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    return default_value if isinstance(value, Undefined) or (boolean and not value) else value


def _f_join(value: Iterable[Any], d: Any = "", attribute: Any = None) -> str:
    if attribute is not None:
        value = map(_attrgetter(attribute), value)
    return _to_str(d).join(map(_to_str, value))


def _f_first(seq: Iterable[Any]) -> Any:
    return next(iter(seq), Undefined("No first item, sequence was empty."))


def _f_last(seq: Any) -> Any:
    return next(iter(reversed(seq)), Undefined("No last item, sequence was empty."))


def _f_tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
              sort_keys: bool = False) -> str:  # transformers' override of jinja's tojson
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _f_int(value: Any, default: int = 0, base: int = 10) -> int:
    try:
        return int(value, base) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError, OverflowError):
            return default


def _f_float(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _f_items(value: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(value, Undefined):
        return iter(())
    if not isinstance(value, Mapping):
        raise TemplateError("Can only get item pairs from a mapping.")
    return iter(list(value.items()))


def _f_reverse(value: Any) -> Any:
    if isinstance(value, str):
        return value[::-1]
    try:
        return reversed(value)
    except TypeError:
        return list(value)[::-1]


def _f_sort(value: Iterable[Any], reverse: bool = False, case_sensitive: bool = False,
            attribute: Any = None) -> list[Any]:
    names = attribute.split(",") if isinstance(attribute, str) else [attribute]
    getters = [_attrgetter(name, None if case_sensitive else _lower) for name in names]
    return sorted(value, key=lambda item: [get(item) for get in getters], reverse=reverse)


def _f_unique(value: Iterable[Any], case_sensitive: bool = False, attribute: Any = None) -> Iterator[Any]:
    getter, seen = _attrgetter(attribute, None if case_sensitive else _lower), set()
    for item in value:
        if (key := getter(item)) not in seen:
            seen.add(key)
            yield item


def _f_map(value: Iterable[Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    if not args and "attribute" in kwargs:
        func = _attrgetter(kwargs.pop("attribute"), default=kwargs.pop("default", None))
        if kwargs:
            raise TemplateError(f"Unexpected keyword argument {next(iter(kwargs))!r}")
    elif args:
        filt, rest = _lookup(FILTERS, "filter", args[0]), args[1:]
        func = lambda item: filt(item, *rest, **kwargs)
    else:
        raise TemplateError("map requires a filter argument")
    return (func(item) for item in value) if value else iter(())


def _select(attr: bool, keep: bool) -> Callable[..., Iterator[Any]]:
    """select / reject / selectattr / rejectattr."""
    def run(value: Iterable[Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
        if attr and not args:
            raise TemplateError("Missing parameter for attribute name")
        get: Callable[[Any], Any] = _attrgetter(args[0]) if attr else (lambda x: x)
        rest, check = (args[1:] if attr else args), get
        if rest:
            test = _lookup(TESTS, "test", rest[0])
            check = lambda x: test(get(x), *rest[1:], **kwargs)
        return (item for item in value if bool(check(item)) == keep) if value else iter(())
    return run


def _f_indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
    indention = width if isinstance(width, str) else " " * width
    lines = (s + "\n").splitlines()  # like jinja2, non-strings fail here
    if blank:
        rv = ("\n" + indention).join(lines)
    else:
        rv = lines.pop(0)
        if lines:
            rv += "\n" + "\n".join(indention + line if line else line for line in lines)
    return indention + rv if first else rv


def _f_title(s: Any) -> str:
    words = re.split(r"([-\s({\[<]+)", _to_str(s))
    return "".join(w[0].upper() + w[1:].lower() for w in words if w)


def _f_escape(s: Any) -> str:
    text = _to_str(s)
    for old, new in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("'", "&#39;"), ('"', "&#34;")):
        text = text.replace(old, new)
    return text


def _f_round(value: Any, precision: int = 0, method: str = "common") -> Any:
    if method == "common":
        return round(value, precision)
    if method not in ("ceil", "floor"):
        raise TemplateError("method must be common, ceil or floor")
    return getattr(math, method)(value * 10 ** precision) / 10 ** precision


def _min_max(func: Callable[..., Any]) -> Callable[..., Any]:
    def run(value: Iterable[Any], case_sensitive: bool = False, attribute: Any = None) -> Any:
        it = iter(value)
        first = next(it, _NOTHING)
        if first is _NOTHING:
            return Undefined("No aggregated item, sequence was empty.")
        return func(chain([first], it), key=_attrgetter(attribute, None if case_sensitive else _lower))
    return run


def _f_sum(iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    return sum(map(_attrgetter(attribute), iterable) if attribute is not None else iterable, start)


def _f_format(value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise TemplateError("can't handle positional and keyword arguments at the same time")
    return _to_str(value) % (kwargs or args)


_NOTHING = object()
FILTERS: dict[str, Callable[..., Any]] = {
    "abs": abs, "capitalize": lambda s: _to_str(s).capitalize(), "count": len, "d": _f_default,
    "default": _f_default, "e": _f_escape, "escape": _f_escape,
    "first": _f_first, "float": _f_float, "format": _f_format,
    "indent": _f_indent, "int": _f_int, "items": _f_items, "join": _f_join, "last": _f_last,
    "length": len, "list": list, "lower": lambda s: _to_str(s).lower(), "map": _f_map,
    "max": _min_max(max), "min": _min_max(min), "reject": _select(False, False),
    "rejectattr": _select(True, False), "replace": lambda s, old, new, count=None: _to_str(s).replace(
        _to_str(old), _to_str(new), -1 if count is None else count),
    "reverse": _f_reverse, "round": _f_round, "safe": _to_str, "select": _select(False, True),
    "selectattr": _select(True, True), "sort": _f_sort, "string": _to_str, "sum": _f_sum,
    "title": _f_title, "tojson": _f_tojson, "trim": lambda s, chars=None: _to_str(s).strip(chars),
    "unique": _f_unique, "upper": lambda s: _to_str(s).upper(),
}


def _is_sequence(value: Any) -> bool:
    try:
        len(value)
    except TypeError:
        return False
    return hasattr(value, "__getitem__")


def _is_iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


TESTS: dict[str, Callable[..., Any]] = {
    "defined": lambda v: not isinstance(v, Undefined), "undefined": lambda v: isinstance(v, Undefined),
    "none": lambda v: v is None, "boolean": lambda v: v is True or v is False,
    "true": lambda v: v is True, "false": lambda v: v is False,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, float), "number": lambda v: isinstance(v, numbers.Number),
    "string": lambda v: isinstance(v, str), "mapping": lambda v: isinstance(v, Mapping),
    "sequence": _is_sequence, "iterable": _is_iterable, "callable": callable,
    "sameas": lambda v, other: v is other, "escaped": lambda v: hasattr(v, "__html__"),
    "in": lambda v, seq: v in seq, "divisibleby": lambda v, n: v % n == 0,
    "even": lambda v: v % 2 == 0, "odd": lambda v: v % 2 == 1,
    "lower": lambda v: _to_str(v).islower(), "upper": lambda v: _to_str(v).isupper(),
    "filter": lambda v: v in FILTERS, "test": lambda v: v in TESTS,
}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b,
}
for _aliases, _op in (("== eq equalto", "=="), ("!= ne", "!="), ("< lt lessthan", "<"), ("<= le", "<="),
                      ("> gt greaterthan", ">"), (">= ge", ">=")):
    TESTS.update(dict.fromkeys(_aliases.split(), _COMPARE[_op]))
_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow,
}


def _lookup(table: Mapping[str, Callable[..., Any]], kind: str, name: Any) -> Callable[..., Any]:
    if name not in table:
        raise TemplateError(f"No {kind} named {name!r}.")
    return table[name]


# ------------------------------------------------------------------ compiled nodes (closures)
Ev = Callable[[Frame], Any]                                   # an expression node
ArgsEv = Callable[[Frame], tuple[list[Any], dict[str, Any]]]  # call arguments
Run = Callable[[Frame, list[str]], None]                      # a statement node
Body = list[tuple[int, Run]]                                  # statements with their lines


class NSRef(NamedTuple):
    name: str
    attr: str


Target = str | NSRef | list[Any]  # a name, ``ns.attr``, or names to unpack into


class _LoopControl(Exception):
    pass


class _Break(_LoopControl):
    pass


class _Continue(_LoopControl):
    pass


def _exec(body: Body, f: Frame, out: list[str]) -> None:
    for line, run in body:
        try:
            run(f, out)
        except TemplateError as exc:
            exc.lineno = line if exc.lineno is None else exc.lineno
            raise
        except _LoopControl:
            raise
        except RecursionError as exc:
            raise TemplateError(f"recursion too deep (line {line})", line) from exc
        except Exception as exc:
            raise TemplateError(f"{type(exc).__name__}: {exc} (line {line})", line) from exc


def _render(body: Body, f: Frame) -> str:
    out: list[str] = []
    _exec(body, f, out)
    return "".join(out)


def _assign(f: Frame, target: Target, value: Any) -> None:
    if isinstance(target, str):
        f.vars[target] = value
    elif isinstance(target, NSRef):
        ns = f.lookup(target.name)
        if not isinstance(ns, Namespace):
            raise TemplateError("cannot assign attribute on non-namespace object")
        ns.set(target.attr, value)
    else:
        values = list(value)
        if len(values) != len(target):
            raise TemplateError(f"cannot unpack {len(values)} values into {len(target)} names")
        for item, val in zip(target, values):
            _assign(f, item, val)


def _make_for(target: Target, iterable: Ev, cond: Ev | None, body: Body, orelse: Body,
              recursive: bool) -> Run:
    def keep(f: Frame, item: Any) -> bool:
        inner = Frame(f)
        _assign(inner, target, item)
        return cond is None or bool(cond(inner))

    def loop(f: Frame, out: list[str], iterable: Any, depth: int) -> None:
        items = [item for item in iterable if keep(f, item)] if cond else list(iterable)
        if not items:
            _exec(orelse, Frame(f), out)
            return
        ctx = LoopContext(items, depth, (lambda it, d: render(f, it, d)) if recursive else None)
        for index, item in enumerate(items):
            inner = Frame(f, {"loop": ctx})
            _assign(inner, target, item)
            ctx.move(index)
            try:
                _exec(body, inner, out)
            except _Break:
                break
            except _Continue:
                continue

    def render(f: Frame, items: Any, depth: int) -> str:
        out: list[str] = []
        loop(f, out, items, depth)
        return "".join(out)
    return lambda f, out: loop(f, out, iterable(f), 1)


class Macro(_TemplateObject):
    """A ``{% macro %}`` (or a ``{% call %}`` body): calling it renders the body."""

    template_attrs = frozenset({"name"})

    def __init__(self, name: str, params: list[tuple[str, Ev | None]], body: Body, frame: Frame) -> None:
        self.name, self.params, self.body, self.frame = name, params, body, frame

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        f = Frame(self.frame)
        if "caller" in kwargs:
            f.vars["caller"] = kwargs.pop("caller")
        for index, (param, default) in enumerate(self.params):
            if index < len(args):
                f.vars[param] = args[index]
            elif param in kwargs:
                f.vars[param] = kwargs.pop(param)
            else:
                f.vars[param] = default(f) if default else Undefined(f"parameter {param!r} was not provided")
        f.vars["varargs"], f.vars["kwargs"] = tuple(args[len(self.params):]), kwargs
        return _render(self.body, f)


def _make_scope(targets: list[tuple[Target, Ev]], body: Body) -> Run:
    def run(f: Frame, out: list[str]) -> None:
        inner = Frame(f)
        for target, value in targets:
            _assign(inner, target, value(f))
        _exec(body, inner, out)
    return run


def _raise(exc: BaseException) -> NoReturn:
    raise exc


def _text(text: str) -> Run:
    return lambda f, out: out.append(text)


def _output(expr: Ev) -> Run:
    return lambda f, out: out.append(_to_str(expr(f)))


def _const(value: Any) -> Ev:
    return lambda f: value


def _name(name: str) -> Ev:
    return lambda f: f.lookup(name)


def _compare(first: Ev, ops: list[tuple[Callable[[Any, Any], Any], Ev]]) -> Ev:
    def ev(f: Frame) -> bool:
        left = first(f)
        for op, expr in ops:
            right = expr(f)
            if not op(left, right):
                return False
            left = right
        return True
    return ev


def _binop(op: str, left: Ev, right: Ev) -> Ev:
    if op == "and":
        return lambda f: left(f) and right(f)
    if op == "or":
        return lambda f: left(f) or right(f)
    fn = _BINOPS[op]
    return lambda f: fn(left(f), right(f))


def _apply(fn: Callable[..., Any], value: Any, args: ArgsEv, f: Frame) -> Any:
    pos, kw = args(f)
    return fn(value, *pos, **kw)


def _filter_node(fn: Callable[..., Any], value: Ev, args: ArgsEv) -> Ev:
    return lambda f: _apply(fn, value(f), args, f)


def _cond(test: Ev, body: Ev, orelse: Ev | None) -> Ev:
    missing = Undefined("the inline if-expression evaluated to false and no else section was defined.")
    return lambda f: body(f) if test(f) else (orelse(f) if orelse else missing)


# ------------------------------------------------------------------------------------- parser
_CONSTS = {"true": True, "True": True, "false": False, "False": False, "none": None, "None": None}
_TOKEN_NAMES = {"eof": "end of template", "var_end": "end of print statement", "data": "template data",
                "block_end": "end of statement block", "var_begin": "begin of print statement",
                "block_begin": "begin of statement block"}
_End = tuple[tuple[str, str], ...]


class _Parser:
    """Recursive descent over jinja2's grammar; every parse method returns a compiled node."""

    def __init__(self, tokens: list[Token]) -> None:
        self.toks, self.i, self.loops = tokens, 0, 0
        self.blocks: list[tuple[str, int]] = []  # open block tags, for error messages
        self.last_call: tuple[Ev, Ev, ArgsEv] | None = None

    # -- token helpers
    @property
    def cur(self) -> Token:
        return self.toks[self.i]

    def _peek(self) -> Token:
        return self.toks[min(self.i + 1, len(self.toks) - 1)]

    def _next(self) -> Token:
        tok = self.toks[self.i]
        self.i += tok.kind != "eof"
        return tok

    def _is(self, kind: str, value: Any = None, tok: Token | None = None) -> bool:
        tok = tok or self.cur
        return tok.kind == kind and (value is None or tok.value == value)

    def _op(self, *values: str) -> bool:
        return self.cur.kind == "op" and self.cur.value in values

    def _skip(self, kind: str, value: Any = None) -> bool:
        if self._is(kind, value):
            self._next()
            return True
        return False

    def _describe(self, tok: Token) -> str:
        return _TOKEN_NAMES.get(tok.kind, repr(tok.value))

    def fail(self, message: str, tok: Token | None = None) -> NoReturn:
        raise TemplateSyntaxError(message, (tok or self.cur).line)

    def _expect(self, kind: str, value: Any = None) -> Token:
        if not self._is(kind, value):
            want = repr(value) if value is not None else _TOKEN_NAMES.get(kind, kind)
            self.fail(f"expected {want}, got {self._describe(self.cur)}")
        return self._next()

    def _at(self, ends: _End) -> bool:
        return any(self._is(kind, value) for kind, value in ends)

    # -- template structure
    def parse(self) -> Body:
        return self._subparse(())

    def _subparse(self, ends: _End) -> Body:
        body: Body = []
        while True:
            tok = self._next()
            if tok.kind == "data":
                body.append((tok.line, _text(tok.value)))
            elif tok.kind == "var_begin":
                body.append((tok.line, _output(self._tuple())))
                self._expect("var_end")
            elif tok.kind == "block_begin":
                if ends and self._at(ends):
                    return body
                body.append((self.cur.line, self._statement()))
                self._expect("block_end")
            elif tok.kind == "eof" and ends:
                tag, line = self.blocks[-1]
                expected = " or ".join(repr(value) for _, value in ends)
                raise TemplateSyntaxError(f"unexpected end of template, expected {expected} to close the "
                                          f"{tag!r} tag", line)
            elif tok.kind == "eof":
                return body
            else:
                self.fail(f"unexpected {self._describe(tok)}", tok)

    def _body(self, *names: str, drop: bool = False) -> Body:
        self._expect("block_end")
        body = self._subparse(tuple(("name", n) for n in names))
        if drop:
            self._next()
        return body

    def _statement(self) -> Run:
        tok = self._expect("name")
        handler = getattr(self, f"_stmt_{tok.value}", None)
        if handler is None:
            self.fail(f"Encountered unknown tag {tok.value!r}.", tok)
        self.blocks.append((tok.value, tok.line))
        run: Run = handler()
        self.blocks.pop()
        return run

    def _stmt_for(self) -> Run:
        target = self._target(("name", "in"))
        self._expect("name", "in")
        iterable = self._tuple(condexpr=False, extra=(("name", "recursive"),))
        cond = self._expression() if self._skip("name", "if") else None
        recursive = self._skip("name", "recursive")
        self.loops += 1
        body = self._body("endfor", "else")
        self.loops -= 1
        orelse = self._body("endfor", drop=True) if self._next().value == "else" else []
        return _make_for(target, iterable, cond, body, orelse, recursive)

    def _stmt_if(self) -> Run:
        branches: list[tuple[Ev, Body]] = []
        while True:
            test = self._tuple(condexpr=False)
            branches.append((test, self._body("elif", "else", "endif")))
            tag = self._next().value
            if tag != "elif":
                break
        orelse = self._body("endif", drop=True) if tag == "else" else []

        def run(f: Frame, out: list[str]) -> None:
            body = next((body for test, body in branches if test(f)), orelse)
            _exec(body, f, out)
        return run

    def _stmt_set(self) -> Run:
        if self._is("name") and self._is("op", ".", self._peek()):
            name = self._next().value
            self._next()
            target: Target = NSRef(name, self._expect("name").value)
        else:
            target = self._target(("op", "="), ("block_end", None), ("op", "|"))
        if self._skip("op", "="):
            value = self._tuple()
            return lambda f, out: _assign(f, target, value(f))
        filters = self._filters(lambda f: f.vars["\0"], inline=False)
        body = self._body("endset", drop=True)
        return lambda f, out: _assign(f, target, filters(Frame(f, {"\0": _render(body, Frame(f))})))

    def _stmt_filter(self) -> Run:
        filters = self._filters(lambda f: f.vars["\0"], inline=True)
        body = self._body("endfilter", drop=True)
        return lambda f, out: out.append(_to_str(filters(Frame(f, {"\0": _render(body, Frame(f))}))))

    def _stmt_print(self) -> Run:
        return _output(self._tuple())

    def _stmt_with(self) -> Run:
        targets: list[tuple[Target, Ev]] = []
        while not self._is("block_end"):
            if targets:
                self._expect("op", ",")
            target = self._target(("op", "="))
            self._expect("op", "=")
            targets.append((target, self._expression()))
        return _make_scope(targets, self._body("endwith", drop=True))

    def _stmt_generation(self) -> Run:  # transformers' assistant-mask tag: renders its body
        return _make_scope([], self._body("endgeneration", drop=True))

    def _stmt_macro(self) -> Run:
        name = self._expect("name").value
        params = self._signature()
        body = self._nested_body("endmacro")
        return lambda f, out: f.vars.__setitem__(name, Macro(name, params, body, f))

    def _stmt_call(self) -> Run:
        params = self._signature() if self._op("(") else []
        call = self._expression()
        if self.last_call is None or self.last_call[0] is not call:
            self.fail("expected call", self.toks[self.i - 1])
        _, func, args = self.last_call
        body = self._nested_body("endcall")

        def run(f: Frame, out: list[str]) -> None:
            pos, kw = args(f)
            kw["caller"] = Macro("caller", params, body, f)
            out.append(_to_str(_call(func(f), pos, kw)))
        return run

    def _nested_body(self, end: str) -> Body:
        loops, self.loops = self.loops, 0
        body = self._body(end, drop=True)
        self.loops = loops
        return body

    def _stmt_break(self) -> Run:
        if not self.loops:
            self.fail("'break' outside of a loop")
        return lambda f, out: _raise(_Break())

    def _stmt_continue(self) -> Run:
        if not self.loops:
            self.fail("'continue' outside of a loop")
        return lambda f, out: _raise(_Continue())

    def _signature(self) -> list[tuple[str, Ev | None]]:
        params: list[tuple[str, Ev | None]] = []
        self._expect("op", "(")
        while not self._op(")"):
            if params:
                self._expect("op", ",")
            name = self._expect("name").value
            default = self._expression() if self._skip("op", "=") else None
            if default is None and params and params[-1][1] is not None:
                self.fail("non-default argument follows default argument")
            params.append((name, default))
        self._next()
        return params

    def _target(self, *ends: tuple[str, Any]) -> Target:
        """Assignment target: a name or (possibly parenthesized) names separated by commas."""
        items: list[Target] = [self._target_item()]
        while self._skip("op", ","):
            if self._at(ends) or self._op(")"):
                return items
            items.append(self._target_item())
        return items if len(items) > 1 else items[0]

    def _target_item(self) -> Target:
        if self._skip("op", "("):
            target = self._target()
            self._expect("op", ")")
            return target if isinstance(target, list) else [target]
        tok = self.cur
        if tok.kind != "name" or tok.value in _CONSTS:
            self.fail(f"can't assign to {self._describe(tok)}")
        return str(self._next().value)

    # -- expressions
    def _tuple(self, condexpr: bool = True, extra: _End = (), parens: bool = False) -> Ev:
        items: list[Ev] = []
        while True:
            if items:
                self._expect("op", ",")
            if self._is("var_end") or self._is("block_end") or self._op(")") or self._at(extra):
                break
            items.append(self._expression(condexpr))
            if not self._op(","):
                if len(items) == 1:
                    return items[0]
                break
        if not items and not parens:
            self.fail(f"Expected an expression, got {self._describe(self.cur)}")
        return lambda f: tuple(item(f) for item in items)

    def _expression(self, condexpr: bool = True) -> Ev:
        if not condexpr:
            return self._or()
        expr = self._or()
        while self._skip("name", "if"):
            test = self._or()
            expr = _cond(test, expr, self._expression() if self._skip("name", "else") else None)
        return expr

    def _or(self) -> Ev:
        left = self._and()
        while self._skip("name", "or"):
            left = _binop("or", left, self._and())
        return left

    def _and(self) -> Ev:
        left = self._not()
        while self._skip("name", "and"):
            left = _binop("and", left, self._not())
        return left

    def _not(self) -> Ev:
        if self._skip("name", "not"):
            operand = self._not()
            return lambda f: not operand(f)
        return self._compare()

    def _compare(self) -> Ev:
        expr = self._math1()
        ops: list[tuple[Callable[[Any, Any], Any], Ev]] = []
        while True:
            if self._op("==", "!=", "<", "<=", ">", ">="):
                op = self._next().value
            elif self._skip("name", "in"):
                op = "in"
            elif self._is("name", "not") and self._is("name", "in", self._peek()):
                self.i, op = self.i + 2, "notin"
            else:
                return _compare(expr, ops) if ops else expr
            ops.append((_COMPARE[op], self._math1()))

    def _binary(self, ops: tuple[str, ...], operand: Callable[[], Ev]) -> Ev:
        left = operand()
        while self._op(*ops):
            left = _binop(self._next().value, left, operand())
        return left

    def _math1(self) -> Ev:
        return self._binary(("+", "-"), self._concat)

    def _concat(self) -> Ev:
        items = [self._math2()]
        while self._skip("op", "~"):
            items.append(self._math2())
        return items[0] if len(items) == 1 else lambda f: "".join(_to_str(item(f)) for item in items)

    def _math2(self) -> Ev:
        return self._binary(("*", "/", "//", "%"), self._pow)

    def _pow(self) -> Ev:
        return self._binary(("**",), self._unary)

    def _unary(self, with_filter: bool = True) -> Ev:
        if self._op("-", "+"):
            negate, operand = self._next().value == "-", self._unary(False)
            node: Ev = (lambda f: -operand(f)) if negate else (lambda f: +operand(f))
        else:
            node = self._primary()
        node = self._postfix(node)
        return self._filter_expr(node) if with_filter else node

    def _primary(self) -> Ev:
        tok = self._next()
        if tok.kind == "name":
            return _const(_CONSTS[tok.value]) if tok.value in _CONSTS else _name(tok.value)
        if tok.kind == "string":
            parts = [tok.value]
            while self._is("string"):
                parts.append(self._next().value)
            return _const("".join(parts))
        if tok.kind in ("int", "float"):
            return _const(tok.value)
        if tok.kind == "op" and tok.value == "(":
            node = self._tuple(parens=True)
            self._expect("op", ")")
            return node
        if tok.kind == "op" and tok.value == "[":
            items = self._items("]", self._expression)
            return lambda f: [item(f) for item in items]
        if tok.kind == "op" and tok.value == "{":
            pairs = self._items("}", self._dict_pair)
            return lambda f: {key(f): value(f) for key, value in pairs}
        self.fail(f"unexpected {self._describe(tok)}", tok)

    def _items(self, close: str, parse: Callable[[], Any]) -> list[Any]:
        items: list[Any] = []
        while not self._op(close):
            if items:
                self._expect("op", ",")
                if self._op(close):
                    break
            items.append(parse())
        self._next()
        return items

    def _dict_pair(self) -> tuple[Ev, Ev]:
        key = self._expression()
        self._expect("op", ":")
        return key, self._expression()

    def _postfix(self, node: Ev) -> Ev:
        while True:
            if self._op(".", "["):
                node = self._subscript(node)
            elif self._op("("):
                node = self._call(node)
            else:
                return node

    def _filter_expr(self, node: Ev) -> Ev:
        while True:
            if self._op("|"):
                node = self._filters(node, inline=False)
            elif self._is("name", "is"):
                node = self._test(node)
            elif self._op("("):
                node = self._call(node)
            else:
                return node

    def _call(self, func: Ev) -> Ev:
        args = self._call_args()

        def node(f: Frame) -> Any:
            pos, kw = args(f)
            return _call(func(f), pos, kw)
        self.last_call = (node, func, args)
        return node

    def _subscript(self, node: Ev) -> Ev:
        if self._next().value == ".":
            tok = self._next()
            if tok.kind not in ("name", "int"):
                self.fail("expected name or number", tok)
            attr = tok.value
            if tok.kind == "int":
                return lambda f: get_item(node(f), attr)
            return lambda f: get_attr(node(f), attr)
        keys = self._items("]", self._subscribed)
        key = keys[0] if len(keys) == 1 else (lambda f: tuple(k(f) for k in keys))
        return lambda f: get_item(node(f), key(f))

    def _subscribed(self) -> Ev:
        parts: list[Ev | None] = [None]
        if not self._op(":"):
            start = parts[0] = self._expression()
            if not self._op(":"):
                return start
        for _ in range(2):
            stop = not self._skip("op", ":") or self._op("]", ",", ":")
            parts.append(None if stop else self._expression())
        return lambda f: slice(*(None if p is None else p(f) for p in parts))

    def _call_args(self) -> ArgsEv:
        self._expect("op", "(")
        pos: list[Ev] = []
        kws: list[tuple[str, Ev]] = []
        star: list[Ev | None] = [None, None]
        while not self._op(")"):
            if pos or kws or star != [None, None]:
                self._expect("op", ",")
                if self._op(")"):
                    break
            if self._op("*", "**"):
                star[self._next().value == "**"] = self._expression()
            elif self._is("name") and self._is("op", "=", self._peek()):
                key = self._next().value
                self._next()
                kws.append((key, self._expression()))
            elif kws or star != [None, None]:
                self.fail("invalid syntax for function call expression")
            else:
                pos.append(self._expression())
        self._next()

        def ev(f: Frame) -> tuple[list[Any], dict[str, Any]]:
            args, kwargs = [a(f) for a in pos], {k: v(f) for k, v in kws}
            args.extend(star[0](f) if star[0] else ())
            kwargs.update(star[1](f) if star[1] else {})
            return args, kwargs
        return ev

    def _dotted_name(self, table: Mapping[str, Any], kind: str) -> Callable[..., Any]:
        tok = self._expect("name")
        name = tok.value
        while self._skip("op", "."):
            name += "." + self._expect("name").value
        if name not in table:
            self.fail(f"No {kind} named {name!r}.", tok)
        fn: Callable[..., Any] = table[name]
        return fn

    def _filters(self, node: Ev, inline: bool) -> Ev:
        while inline or self._skip("op", "|"):
            inline = False
            fn = self._dotted_name(FILTERS, "filter")
            args = self._call_args() if self._op("(") else (lambda f: ([], {}))
            node = _filter_node(fn, node, args)
        return node

    def _test(self, node: Ev) -> Ev:
        self._next()
        negated = self._skip("name", "not")
        fn = self._dotted_name(TESTS, "test")
        args: ArgsEv = lambda f: ([], {})
        if self._op("("):
            args = self._call_args()
        elif (self.cur.kind in ("name", "string", "int", "float") or self._op("[", "{")) and not (
                self.cur.kind == "name" and self.cur.value in ("else", "or", "and")):
            if self._is("name", "is"):
                self.fail("You cannot chain multiple tests with is")
            arg = self._postfix(self._primary())
            args = lambda f: ([arg(f)], {})
        return lambda f: bool(_apply(fn, node(f), args, f)) != negated


# ------------------------------------------------------------------------------------ template
class Template:
    """A compiled template: ``Template(source).render(name=value, ...)`` returns the text."""

    def __init__(self, source: str, globals: Mapping[str, Any] | None = None) -> None:
        if not isinstance(source, str):
            raise TypeError(f"template source must be a str, not {type(source).__name__}")
        self.source = source
        self.body = _Parser(tokenize(source)).parse()
        self.globals = {**DEFAULT_GLOBALS, **(globals or {})}

    def render(self, variables: Mapping[str, Any] | None = None, /, **kwargs: Any) -> str:
        """Render with ``variables`` (and keyword arguments) on top of the globals."""
        frame = Frame(Frame(None, dict(self.globals)), {**(variables or {}), **kwargs})
        return _render(self.body, frame)
