"""Structured outputs: constrained decoding in the core (standard library only).

Theory of operation
-------------------
A request's output format (`OutputFormat`: a JSON schema, any JSON object, a regex, a list of
choices, tool calls) compiles to one regular language over bytes (schema.py, ast.py), whose
automaton (automaton.py) is determinized lazily. Per step the scheduler asks the request's
`Matcher` for the mask of its current DFA state: one byte per token id saying which tokens
keep the output inside the language (vocab.py walks the vocabulary trie with the DFA, once per
state; the mask is kept on the grammar, so later steps and later requests with the same format
only look it up). The mask rides in the step plan (`SeqStep.masks`, a `TokenMask` with a key
that never changes meaning) and the engine applies it to the logits before sampling, so greedy
and seeded sampling pick the same tokens on every engine. The scheduler advances the matcher
by each token's bytes; drafts to verify are checked against it first (and cut at the first one
it refuses), with one mask per verified position.

Every DFA state can still reach the end (automaton.Nfa.prune), so a constrained output can
always be finished: it ends when the language allows nothing more (the request finishes with
"stop" at once), or with an end-of-sequence token where the language may end; it can only be
cut short by max_tokens, a stop string or the context.

A state from which every byte string is accepted (free text after a choice, in tool-call
"auto" mode) is unconstrained: no mask is sent and the matcher drops out.
"""
from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..step import TokenMask
from .ast import Lit, Node, RegexError, alt, parse_regex
from .automaton import Dfa, GrammarTooLarge
from .schema import SchemaError, compile_schema, json_object
from .vocab import ROADS_KEPT, Vocabulary

KINDS = ("json_object", "json_schema", "regex", "choice", "tool_calls")
CLOSE_WINDOW = 96  # with this many tokens left or fewer, a constrained output checks its way to an end
CLOSE_MARGIN = 4  # ... and takes it when it needs all but this many of them
_keys = itertools.count(1)


class StructuredError(ValueError):
    """An output format that cannot be served; `param` names the field (for a 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, eq=False)
class OutputFormat:
    """What the output must be: `kind` one of KINDS; `spec` the JSON schema (json_schema), the
    pattern (regex), the list of strings (choice), or {"tools": [...], "mode": ...}
    (tool_calls, see tools.py). JSON-able, so it crosses to Pyodide and back unchanged."""

    kind: str
    spec: Any = None

    def key(self) -> str:
        return json.dumps([self.kind, self.spec], sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def of(cls, response_format: Mapping[str, Any] | None = None, *, json_schema: Any = None,
           regex: str | None = None, choice: Sequence[str] | None = None,
           param: str = "response_format") -> "OutputFormat | None":
        """From OpenAI's `response_format` ({"type": "text" | "json_object" | "json_schema",
        "json_schema": {"name", "schema", "strict"}}) or one of the keyword forms."""
        given = [x is not None for x in (response_format, json_schema, regex, choice)]
        if sum(given) > 1:
            raise StructuredError("give one of response_format, json_schema, regex and choice", param)
        if json_schema is not None:
            return cls("json_schema", json_schema)
        if regex is not None:
            if not isinstance(regex, str):
                raise StructuredError("regex must be a string", "regex")
            return cls("regex", regex)
        if choice is not None:
            if isinstance(choice, str) or not isinstance(choice, Sequence) or not choice or \
                    not all(isinstance(c, str) and c for c in choice):
                raise StructuredError("choice must be a non-empty list of non-empty strings", "choice")
            return cls("choice", list(choice))
        if response_format is None:
            return None
        if not isinstance(response_format, Mapping):
            raise StructuredError("response_format must be an object", param)
        t = response_format.get("type")
        extra = set(response_format) - {"type", "json_schema"}
        if extra:
            raise StructuredError(f"unknown response_format fields {sorted(extra)}", param)
        if t == "text":
            return None
        if t == "json_object":
            return cls("json_object")
        if t == "json_schema":
            js = response_format.get("json_schema")
            if not isinstance(js, Mapping):
                raise StructuredError("response_format.json_schema must be an object with a 'schema'",
                                      f"{param}.json_schema")
            unknown = set(js) - {"name", "schema", "strict", "description"}
            if unknown:
                raise StructuredError(f"unknown response_format.json_schema fields {sorted(unknown)}",
                                      f"{param}.json_schema")
            schema = js.get("schema", {})
            return cls("json_schema", schema)
        raise StructuredError(f"response_format.type must be 'text', 'json_object' or 'json_schema', got {t!r}",
                              f"{param}.type")


def grammar_node(fmt: OutputFormat) -> Node:
    """The grammar of an output format; StructuredError naming what is wrong."""
    try:
        if fmt.kind == "json_object":
            return json_object()
        if fmt.kind == "json_schema":
            return compile_schema(fmt.spec)
        if fmt.kind == "regex":
            return parse_regex(fmt.spec)
        if fmt.kind == "choice":
            return alt(*(Lit(c) for c in fmt.spec))
        if fmt.kind == "tool_calls":
            from .tools import tool_call_grammar

            return tool_call_grammar(fmt.spec)
    except SchemaError as e:
        raise StructuredError(f"unsupported JSON schema: {e}", "json_schema") from None
    except RegexError as e:
        raise StructuredError(f"unsupported regex: {e}", "regex") from None
    raise StructuredError(f"unknown output format {fmt.kind!r}")


class Grammar:
    """A compiled format over one vocabulary: its DFA and the masks of the states reached so far."""

    def __init__(self, node: Node, vocab: Vocabulary, what: str = "the output format") -> None:
        try:
            self.dfa = Dfa(node)
        except GrammarTooLarge as e:
            raise StructuredError(str(e)) from None
        except RecursionError:
            raise StructuredError(f"{what} is nested too deeply") from None
        if self.dfa.empty:
            raise StructuredError(f"{what} admits no output (no finite value satisfies it)")
        self.vocab = vocab
        self.dfa.lookahead = max(self.dfa.lookahead, vocab.longest + 1)
        for m in sorted(self.dfa.nfa.wide)[:ROADS_KEPT]:  # split the vocabulary by its wide classes now,
            vocab.road(m)  # at compile time (once per process each), not in a step
        self.masks: dict[int, TokenMask] = {}
        self._paths: dict[int, bytes] = {}
        self._closing: dict[int, TokenMask] = {}

    def closing_path(self, d: int) -> bytes:
        """The shortest bytes from state d to a state where the output may end."""
        p = self._paths.get(d)
        if p is None:
            p = self._paths[d] = self.dfa.shortest_end(d)
        return p

    def closing_mask(self, d: int) -> TokenMask:
        """Only the tokens that spell a beginning of closing_path(d) (an end token where d may
        end): the output then finishes within len(closing_path(d)) tokens."""
        m = self._closing.get(d)
        if m is None:
            allowed = bytearray(self.vocab.size)
            path = self.closing_path(d)
            if path:
                for t in self.vocab.prefixes(path):
                    allowed[t] = 1
            else:
                for e in self.vocab.eos:
                    allowed[e] = 1
            m = self._closing[d] = TokenMask(next(_keys), bytes(allowed))
        return m

    def mask(self, d: int) -> TokenMask:
        m = self.masks.get(d)
        if m is None:
            m = self.masks[d] = TokenMask(next(_keys), self.vocab.mask(self.dfa, d))
        return m


class Constrainer:
    """Compiles output formats for one vocabulary and keeps the last `capacity` of them (a
    format seen before costs nothing to compile and its masks are already there)."""

    def __init__(self, vocab: Vocabulary, capacity: int = 64) -> None:
        self.vocab = vocab
        self.capacity = capacity
        self._cache: OrderedDict[str, Grammar] = OrderedDict()

    def warm(self) -> None:
        """Make now what most formats need first: any JSON, and the split of the vocabulary by
        a JSON string's characters (vocab.Road), so the first request meets them made."""
        g = self.grammar(OutputFormat("json_object"))
        d = g.dfa.walk(0, b'{"')
        g.mask(0)
        if d >= 0:
            g.mask(d)

    def grammar(self, fmt: OutputFormat) -> Grammar:
        key = fmt.key()
        g = self._cache.get(key)
        if g is None:
            g = Grammar(grammar_node(fmt), self.vocab, f"the {fmt.kind} format")
            self._cache[key] = g
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return g

    def matcher(self, fmt: OutputFormat) -> "Matcher":
        return Matcher(self.grammar(fmt))


class Matcher:
    """One request's place in its grammar."""

    def __init__(self, grammar: Grammar) -> None:
        self.grammar = grammar
        self.state = 0

    @property
    def free(self) -> bool:
        """Nothing is constrained from here on."""
        return self.grammar.dfa.universal(self.state)

    @property
    def final(self) -> bool:
        """The output is complete and nothing may follow."""
        return self.grammar.dfa.final(self.state)

    @property
    def accepting(self) -> bool:
        return self.grammar.dfa.accepting[self.state]

    def mask(self, state: int | None = None, budget: int | None = None) -> TokenMask | None:
        """The tokens allowed next (None: any token). With `budget` (the tokens the output may
        still take), once the shortest way to an end needs nearly all of them, only that way
        is allowed, so the output completes instead of being cut off (CLOSE_WINDOW)."""
        d = self.state if state is None else state
        if self.grammar.dfa.universal(d):
            return None
        if budget is not None and budget <= CLOSE_WINDOW and \
                len(self.grammar.closing_path(d)) + CLOSE_MARGIN >= budget:
            return self.grammar.closing_mask(d)
        return self.grammar.mask(d)

    def next_state(self, token: int, state: int | None = None) -> int:
        """The state after `token` (-1 if the grammar refuses it; end-of-sequence ids: -1)."""
        d = self.state if state is None else state
        vocab = self.grammar.vocab
        if not 0 <= token < len(vocab.token_bytes):
            return -1
        return self.grammar.dfa.walk(d, vocab.token_bytes[token]) if vocab.token_bytes[token] else -1

    def advance(self, token: int) -> bool:
        """Take `token`; False if the grammar refuses it (the state is then unchanged)."""
        d = self.next_state(token)
        if d < 0:
            return False
        self.state = d
        return True

    def drafts(self, tokens: Sequence[int]) -> tuple[int, list[TokenMask | None]]:
        """How many of `tokens` (drafts, in order) the grammar takes, and the mask at each of the
        positions a verify step samples: before the first draft and after each taken one."""
        d = self.state
        masks = [self.mask(d)]
        n = 0
        for t in tokens:
            nd = self.next_state(t, d)
            if nd < 0 or self.grammar.dfa.final(nd):
                if nd >= 0:
                    n += 1
                    masks.append(self.mask(nd))
                break
            d = nd
            n += 1
            masks.append(self.mask(d))
        return n, masks


__all__ = ["Constrainer", "Grammar", "Matcher", "OutputFormat", "StructuredError", "Vocabulary", "grammar_node"]
