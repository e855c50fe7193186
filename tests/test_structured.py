"""Structured outputs in the core (realm_web/structured), no model run: the regex parser against
Python's `re`, JSON schemas (hypothesis-generated) whose every string parses and validates under
`jsonschema`, token masks against a brute-force walk over the real vocabulary, and the refusals."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realm_web.structured import Constrainer, Matcher, OutputFormat, StructuredError, Vocabulary, grammar_node
from realm_web.structured.ast import parse_regex
from realm_web.structured.automaton import Dfa, GrammarTooLarge
from realm_web.structured.schema import compile_schema
from realm_web.tokenizer import load_tokenizer


def sample(dfa: Dfa, rng: random.Random, steps: int = 60) -> bytes:
    """A random string of the DFA's language: random bytes while `steps` last (stopping now and
    then where it may end), then the shortest way to an accepting state."""
    out, d = bytearray(), 0
    for _ in range(steps):
        if dfa.accepting[d] and rng.random() < 0.15:
            return bytes(out)
        nxt = [b for b, t in enumerate(dfa.row(d)) if t >= 0]
        if not nxt:
            break
        # prefer ASCII so strings stay readable, but take other bytes too
        b = rng.choice([x for x in nxt if x < 128] or nxt) if rng.random() < 0.9 else rng.choice(nxt)
        out.append(b)
        d = dfa.row(d)[b]
    return bytes(out) + dfa.shortest_end(d)  # then the nearest way to an end


PATTERNS = [r"[a-z]{2,5}", r"\d{3}-\d{4}", r"(foo|bar)+baz?", r"[^\s\"]{1,4}", r"a.c", r"(?:ab|cd)*e{2}",
            r"[A-Z][a-z]*( [A-Z][a-z]*){0,2}", r"x?y+z*", r"[\u00e9\u4e2d]{1,3}", r"\w+@\w+\.com", r"-?\d+(\.\d+)?",
            r"^start.end$", r'"quoted\\"', r"[\t\n]?[0-9a-fA-F]{2}"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_regex_language_is_pythons_fullmatch(pattern: str) -> None:
    dfa = Dfa(parse_regex(pattern))
    rng = random.Random(pattern)
    for _ in range(200):  # sound: what the automaton spells, re fully matches
        s = sample(dfa, rng).decode("utf-8")
        assert re.fullmatch(pattern, s, re.ASCII), (pattern, s)

    @settings(max_examples=150, deadline=None)
    @given(st.from_regex(re.compile(pattern, re.ASCII), fullmatch=True))
    def complete(s: str) -> None:  # complete: what re fully matches, the automaton takes
        assert dfa.walk(0, s.encode()) >= 0 and dfa.accepting[dfa.walk(0, s.encode())], (pattern, s)

    complete()


@pytest.mark.parametrize("pattern, what", [(r"(a)\1", "backreference"), (r"(?=a)b", "lookaround"), (r"a\bb", "\\b"),
                                           (r"a^b", "'^'"), (r"a$b", "'$'"), (r"(ab", "')'"), (r"ab)", "')'"),
                                           (r"*a", "repeat"), (r"a{2000}", "1000"), (r"[z-a]", "range")])
def test_regex_refusals_say_why(pattern: str, what: str) -> None:
    with pytest.raises(ValueError, match=re.escape(what)):
        parse_regex(pattern)


# -- JSON schemas ---------------------------------------------------------------------------------
names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=6)
leaf = st.one_of(
    st.just({"type": "string"}),
    st.builds(lambda a, b: {"type": "string", "minLength": a, "maxLength": a + b}, st.integers(0, 3), st.integers(0, 4)),
    st.builds(lambda p: {"type": "string", "pattern": p}, st.sampled_from(PATTERNS[:10])),
    st.sampled_from([{"type": "string", "format": f} for f in ("date", "date-time", "uuid", "email", "ipv4", "time")]),
    st.builds(lambda v: {"enum": v}, st.lists(st.one_of(names, st.integers(-5, 5), st.none(), st.booleans()),
                                              min_size=1, max_size=4, unique=True)),
    st.builds(lambda v: {"const": v}, st.one_of(names, st.integers(), st.lists(st.integers(0, 3), max_size=2))),
    st.just({"type": "integer"}), st.just({"type": "number"}), st.just({"type": "boolean"}), st.just({"type": "null"}),
    st.builds(lambda lo, w, t, x: {"type": t, ("exclusiveMinimum" if x else "minimum"): lo,
                                   "maximum": lo + w + (1 if x else 0)},
              st.integers(-1000, 1000), st.integers(0, 500), st.sampled_from(["integer", "number"]), st.booleans()),
    st.builds(lambda lo, t: {"type": t, "minimum": lo}, st.integers(-50, 50), st.sampled_from(["integer", "number"])),
    st.builds(lambda hi, t: {"type": t, "exclusiveMaximum": hi}, st.integers(-50, 50), st.sampled_from(["integer", "number"])),
    st.just({"type": ["string", "null"]}), st.just({}), st.just({"type": "object"}), st.just({"type": "array"}),
)


def objects(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    def build(props: dict[str, Any], req: list[bool], closed: bool) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "object", "properties": props,
                             "required": [k for k, r in zip(props, req) if r]}
        if closed:
            s["additionalProperties"] = False
        return s
    return st.builds(build, st.dictionaries(names, children, min_size=1, max_size=4),
                     st.lists(st.booleans(), min_size=4, max_size=4), st.booleans())


schemas = st.recursive(leaf, lambda c: st.one_of(
    objects(c),
    st.builds(lambda i, lo, w: {"type": "array", "items": i, "minItems": lo, "maxItems": lo + w}, c,
              st.integers(0, 2), st.integers(0, 3)),
    st.builds(lambda i: {"type": "array", "items": i}, c),
    st.builds(lambda a, b: {"anyOf": [a, b]}, c, c),
    st.builds(lambda p, r: {"type": "array", "prefixItems": p, "items": r}, st.lists(c, min_size=1, max_size=3),
              st.one_of(st.just(False), c)),
), max_leaves=8)
schemas = st.one_of(schemas, st.builds(lambda a, b: {"$defs": {"x": a}, "type": "object", "required": ["v"], "properties": {
    "v": {"$ref": "#/$defs/x"}, "w": {"type": "array", "items": {"$ref": "#/$defs/x"}}, "u": b}}, schemas, schemas))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schemas, st.integers(0, 2**32))
def test_every_string_of_a_schema_parses_and_validates(schema: dict[str, Any], seed: int) -> None:
    try:
        dfa = Dfa(compile_schema(schema))
    except GrammarTooLarge:  # refused with the reason (a 400 at the server): nested free values can be too many
        return
    if dfa.empty:
        return
    rng = random.Random(seed)
    for _ in range(6):
        text = sample(dfa, rng).decode("utf-8")
        jsonschema.validate(json.loads(text), schema)


decimals = st.decimals(min_value=-300, max_value=300, places=3, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.none(), decimals), st.booleans(), st.one_of(st.none(), decimals), st.booleans(),
       st.lists(st.tuples(st.decimals(min_value=-400, max_value=400, places=4, allow_nan=False, allow_infinity=False),
                          st.integers(0, 3)), min_size=20, max_size=40))
def test_number_bounds_are_exact_for_decimals(lo, lo_x, hi, hi_x, probes) -> None:  # type: ignore[no-untyped-def]
    """A `number` with decimal bounds takes exactly the decimals within them: spellings around
    and between the bounds (trailing zeros too) are taken iff their value is inside."""
    from decimal import Decimal

    schema: dict[str, Any] = {"type": "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_x else "minimum"] = float(lo)
    if hi is not None:
        schema["exclusiveMaximum" if hi_x else "maximum"] = float(hi)
    if lo is None and hi is None:
        return
    dfa = Dfa(compile_schema(schema))
    lo_d = None if lo is None else Decimal(repr(float(lo)))
    hi_d = None if hi is None else Decimal(repr(float(hi)))
    edges = [x for x in (lo_d, hi_d) if x is not None]
    values = [v for v, _ in probes] + edges + [e + Decimal(k) / 1000 for e in edges for k in (-1, 1)]
    for i, v in enumerate(values):
        text = format(v.quantize(Decimal(1).scaleb(-(i % 5))) if i % 5 else v.to_integral_value(), "f")
        if text.startswith("-") and Decimal(text) == 0:
            continue  # '-0' is never spelled
        val = Decimal(text)
        inside = (lo_d is None or (val > lo_d if lo_x else val >= lo_d)) and \
            (hi_d is None or (val < hi_d if hi_x else val <= hi_d))
        end = -1 if dfa.empty else dfa.walk(0, text.encode())
        assert (end >= 0 and dfa.accepting[end]) == inside, (schema, text)
    if not dfa.empty:
        rng = random.Random(0)
        for _ in range(20):
            jsonschema.validate(json.loads(sample(dfa, rng)), schema)


RECURSIVE = {"$defs": {"node": {"type": "object", "properties": {
    "value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
    "required": ["value", "children"], "additionalProperties": False}}, "$ref": "#/$defs/node"}
PYDANTIC_STYLE = {  # what openai's `parse(response_format=Model)` sends for a nested pydantic model
    "$defs": {"Address": {"properties": {"city": {"title": "City", "type": "string"},
                                         "zip": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Zip"}},
                          "required": ["city", "zip"], "title": "Address", "type": "object", "additionalProperties": False},
              "Kind": {"enum": ["a", "b"], "title": "Kind", "type": "string"}},
    "properties": {"name": {"title": "Name", "type": "string"}, "age": {"title": "Age", "type": "integer"},
                   "home": {"$ref": "#/$defs/Address"}, "kind": {"$ref": "#/$defs/Kind"},
                   "tags": {"items": {"type": "string"}, "title": "Tags", "type": "array"}},
    "required": ["name", "age", "home", "kind", "tags"], "title": "Person", "type": "object",
    "additionalProperties": False}


@pytest.mark.parametrize("schema", [RECURSIVE, PYDANTIC_STYLE], ids=["recursive", "pydantic"])
def test_refs_recursion_and_pydantic_schemas(schema: dict[str, Any]) -> None:
    dfa = Dfa(compile_schema(schema))
    rng = random.Random(1)
    for _ in range(40):
        jsonschema.validate(json.loads(sample(dfa, rng, 200).decode()), schema)


@pytest.mark.parametrize("schema, field", [
    ({"type": "string", "minLength": 2, "pattern": "a+"}, "pattern"),
    ({"type": "integer", "multipleOf": 3}, "multipleOf"),
    ({"type": "object", "patternProperties": {"a": {}}}, "patternProperties"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"$ref": "https://example.com/s.json"}, "$ref"),
    ({"$ref": "#/$defs/missing"}, "missing"),
    ({"type": "strin"}, "type"),
    ({"type": "string", "pattern": "(?=x)"}, "pattern"),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf"),
])
def test_unsupported_schemas_are_refused_by_name(schema: dict[str, Any], field: str) -> None:
    with pytest.raises(StructuredError, match=re.escape(field)):
        grammar_node(OutputFormat("json_schema", schema))


def test_unsatisfiable_schemas_are_refused() -> None:
    impossible = {"type": "object", "properties": {"a": False}, "required": ["a"]}
    vocab = Vocabulary([b"a", b"{", b"}"], frozenset(), 3, [])
    with pytest.raises(StructuredError, match="admits no output"):
        Constrainer(vocab).grammar(OutputFormat("json_schema", impossible))


def test_output_format_of_openai_shapes() -> None:
    assert OutputFormat.of({"type": "text"}) is None
    assert OutputFormat.of({"type": "json_object"}).kind == "json_object"  # type: ignore[union-attr]
    f = OutputFormat.of({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}, "strict": True}})
    assert f is not None and f.kind == "json_schema" and f.spec == {"type": "integer"}
    for bad in ({"type": "xml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"schema": {}, "x": 1}},
                {"type": "json_object", "extra": 1}, "json"):
        with pytest.raises(StructuredError):
            OutputFormat.of(bad)  # type: ignore[arg-type]
    with pytest.raises(StructuredError):
        OutputFormat.of(json_schema={}, regex="a")
    with pytest.raises(StructuredError):
        OutputFormat.of(choice=[])


BOUNDED = OutputFormat("json_schema", {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12}, "email": {"type": "string", "format": "email"}},
    "required": ["name", "email"], "additionalProperties": False})


# -- masks over the real vocabulary -------------------------------------------------------------------
@pytest.fixture(scope="module")
def vocab(model_dir: Path) -> Vocabulary:
    tok = load_tokenizer(model_dir)
    return Vocabulary.of(tok, 49152, [2])


@pytest.mark.model
@pytest.mark.parametrize("fmt", [OutputFormat("json_schema", PYDANTIC_STYLE), OutputFormat("json_object"),
                                 OutputFormat("regex", r"[\u00e9a-z]{1,8}( \d+)?"),
                                 OutputFormat("choice", ["Paris", "Par", "London \u20ac"]), BOUNDED], ids=lambda f: f.kind)
def test_masks_agree_with_walking_every_token(vocab: Vocabulary, fmt: OutputFormat) -> None:
    """mask[t] is 1 exactly when the grammar takes token t's bytes from the state (and an end
    token exactly when the state may end), along random paths through the grammar."""
    g = Constrainer(vocab).grammar(fmt)
    rng = random.Random(7)
    m = Matcher(g)
    in_trie = set(vocab.trie.order)
    for _ in range(16):
        d = m.state
        got = g.mask(d).allowed
        for t, b in enumerate(vocab.token_bytes):
            if not b or t in (2,) or t >= vocab.size:
                continue
            want = g.dfa.walk(d, b) >= 0 and t in in_trie
            assert bool(got[t]) == want, (fmt.kind, d, t, b)
        assert bool(got[2]) == g.dfa.accepting[d]
        allowed = [t for t in range(vocab.size) if got[t] and t != 2]
        if not allowed:
            break
        assert m.advance(rng.choice(allowed))



# -- masks over a made-up vocabulary: every reachable state, roads and their ends -----------------------
ROAD_PATTERNS = [r'"[^"\\]{0,12}"', r"[a-z0-9._%+-]{1,9}@[a-z]{1,5}", r"[a-z]{3}[a-c]+", r"([a-z]{5}|[a-m]{8})!",
                 r"[\x20-\x7e]{2,6}", r"(ab|[a-z]{4})+", r'[^"]*"x', r"[a-z]{0,40}\.", r'[^"\n]{3,}"']


@pytest.mark.parametrize("pattern", ROAD_PATTERNS)
def test_masks_agree_with_brute_force_on_every_state(pattern: str) -> None:
    """Wide byte sets (vocab.Road: tokens split by where they leave the set) and bounded runs
    (automaton.Dfa.run) against walking every token, on every state the DFA reaches."""
    rng = random.Random(pattern)
    alphabet = "abcmxyz019._@!\" \\\n\u00e9ABZ"
    tokens = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))).encode() for _ in range(3000)}
    tokens |= {b"a" * n for n in range(1, 30)} | {b'"' + b"b" * n + b'"' for n in range(12)}
    toks = sorted(tokens)
    vocab = Vocabulary(toks + [b""], frozenset(), len(toks) + 1, [len(toks)])
    g = Constrainer(vocab).grammar(OutputFormat("regex", pattern))
    seen, todo = {0}, [0]
    while todo and len(seen) < 400:
        d = todo.pop()
        got = g.mask(d).allowed
        for t, b in enumerate(toks):
            nd = g.dfa.walk(d, b)
            assert bool(got[t]) == (nd >= 0), (pattern, d, b)
            if nd >= 0 and nd not in seen:
                seen.add(nd)
                todo.append(nd)
        assert bool(got[len(toks)]) == g.dfa.accepting[d]
