"""Request fields for structured outputs and tool calls (pure functions, no I/O).

OpenAI's `response_format` ({"type": "text" | "json_object" | "json_schema"}), vLLM's
`guided_json`, `guided_regex`, `guided_choice` (and `structured_outputs: {"json" | "regex" |
"choice"}`) become one realm_web.structured.OutputFormat; chat `tools` + `tool_choice` become a
"tool_calls" format. Each is compiled here, before the request is queued, so a schema the core
cannot serve is a 400 naming the field.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from ..structured import OutputFormat, StructuredError
from .errors import bad_request

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
EXTENSIONS = {"guided_json", "guided_regex", "guided_choice", "structured_outputs"}


class Compiles(Protocol):
    def check_format(self, fmt: OutputFormat) -> None: ...


@dataclass(frozen=True)
class Tools:
    """A chat's offered functions and how they may be called."""

    functions: list[dict[str, Any]]  # OpenAI function objects: name, description, parameters
    mode: str  # "auto" | "required" | a function's name
    parallel: bool = False

    @property
    def names(self) -> list[str]:
        return [f["name"] for f in self.functions]

    def output_format(self) -> OutputFormat:
        return OutputFormat("tool_calls", {"tools": [{"name": f["name"], "parameters": f.get("parameters")}
                                                     for f in self.functions],
                                           "mode": self.mode, "parallel": self.parallel})


def _compile(model: Compiles, fmt: OutputFormat, param: str) -> OutputFormat:
    try:
        model.check_format(fmt)
    except StructuredError as e:
        raise bad_request(str(e), param, "invalid_schema" if fmt.kind != "regex" else "invalid_regex") from None
    return fmt


def output_format(body: Mapping[str, Any], model: Compiles) -> OutputFormat | None:
    """The request's output format (None: free text)."""
    given = [k for k in ("response_format", *sorted(EXTENSIONS)) if body.get(k) is not None]
    if len(given) > 1:
        raise bad_request(f"give only one of {given}", given[1], "invalid_value")
    if not given:
        return None
    key = given[0]
    v = body[key]
    try:
        if key == "response_format":
            fmt = OutputFormat.of(v)
        elif key == "guided_json":
            fmt = OutputFormat.of(json_schema=v) if not isinstance(v, str) else OutputFormat.of(json_schema=_json(v, key))
        elif key == "guided_regex":
            fmt = OutputFormat.of(regex=v)
        elif key == "guided_choice":
            fmt = OutputFormat.of(choice=v)
        else:
            if not isinstance(v, Mapping) or len(v) != 1 or next(iter(v)) not in ("json", "regex", "choice"):
                raise StructuredError("structured_outputs takes one of 'json', 'regex', 'choice'")
            (k, x), = v.items()
            fmt = OutputFormat.of(json_schema=x) if k == "json" else OutputFormat.of(regex=x) if k == "regex" \
                else OutputFormat.of(choice=x)
    except StructuredError as e:
        raise bad_request(str(e), key if e.param in (None, "json_schema", "regex", "choice") else e.param,
                          "invalid_value") from None
    return _compile(model, fmt, key) if fmt is not None else None


def _json(text: str, key: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise bad_request(f"'{key}' must be a JSON schema (an object, or its JSON text)", key, "invalid_value") from None


def parse_tools(body: Mapping[str, Any], model: Compiles) -> Tools | None:
    """`tools` + `tool_choice` + `parallel_tool_calls` -> Tools (None: no tool may be called)."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise bad_request("'tool_choice' names a tool, but no 'tools' are given", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list of tool objects", "tools", "invalid_type")
    functions: list[dict[str, Any]] = []
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise bad_request(f"{where} must be {{'type': 'function', 'function': {{...}}}}", where, "invalid_value")
        unknown = set(t) - {"type", "function"}
        if unknown:
            raise bad_request(f"{where} has unknown fields {sorted(unknown)}", where, "unknown_parameter")
        f = t["function"]
        unknown = set(f) - {"name", "description", "parameters", "strict"}
        if unknown:
            raise bad_request(f"{where}.function has unknown fields {sorted(unknown)}", f"{where}.function",
                              "unknown_parameter")
        name = f.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise bad_request(f"{where}.function.name must be 1-64 letters, digits, '_' or '-'", f"{where}.function.name",
                              "invalid_value")
        if name in (g["name"] for g in functions):
            raise bad_request(f"{where}.function.name {name!r} is given twice", f"{where}.function.name", "invalid_value")
        if f.get("description") is not None and not isinstance(f["description"], str):
            raise bad_request(f"{where}.function.description must be a string", f"{where}.function.description",
                              "invalid_type")
        params = f.get("parameters")
        if params is not None:
            if not isinstance(params, dict):
                raise bad_request(f"{where}.function.parameters must be a JSON schema object",
                                  f"{where}.function.parameters", "invalid_type")
            _compile(model, OutputFormat("json_schema", params), f"{where}.function.parameters")
        functions.append({k: v for k, v in f.items() if k != "strict"})
    if choice is None or choice == "auto":
        mode = "auto"
    elif choice == "none":
        return None
    elif choice == "required":
        mode = "required"
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        mode = choice["function"]["name"]
        if mode not in (f["name"] for f in functions):
            raise bad_request(f"'tool_choice' names {mode!r}, which is not in 'tools'", "tool_choice", "invalid_value")
    else:
        raise bad_request("'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                          "{'name': ...}}", "tool_choice", "invalid_value")
    # several calls in one answer only when asked for: a small model, allowed more, repeats its call
    out = Tools(functions, mode, body.get("parallel_tool_calls") is True)
    _compile(model, out.output_format(), "tools")
    return out
