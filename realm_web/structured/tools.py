"""Tool calls: the grammar of a call, the prompt that offers the tools, and reading calls back.

A call is written the way Hermes / Qwen-style templates write it:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

The grammar (`tool_call_grammar`) spells one or more such blocks, each naming one of the offered
functions with arguments valid under its parameter schema. Modes: "required" (at least one
call), a function's name (calls of that one only), and "auto": either calls, or any text that
does not begin with "<tool_call>" (once the text has gone elsewhere, nothing is constrained).
With `parallel` false there is exactly one call.

A model whose chat template has no tool format gets the tools in a system message
(`tool_system_prompt`), and earlier calls and results in the conversation are written as text
(`plain_tool_messages`).
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from .ast import EMPTY, Bytes, Cls, Join, Lit, Node, alt, cat, negate, opt
from .schema import COLON, SEP, WS, SchemaCompiler, json_literal

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def _call(name: str, parameters: Any) -> Node:
    args = SchemaCompiler(parameters if parameters is not None else {"type": "object"}).compile()
    return cat(Lit("{"), WS, Lit('"name"'), COLON, json_literal(name), SEP, Lit('"arguments"'), COLON, args, WS,
               Lit("}"))


def _not_prefixed(p: str) -> Node:
    """Any text that does not begin with p (p's proper prefixes included)."""
    options: list[Node] = [Lit(p[:k]) for k in range(len(p))]
    for k in range(len(p)):
        options.append(cat(Lit(p[:k]), Cls(negate(((ord(p[k]), ord(p[k])),))), Bytes()))
    return alt(*options)


def tool_call_grammar(spec: Mapping[str, Any]) -> Node:
    """spec: {"tools": [{"name", "parameters"}], "mode": "auto" | "required" | <name>, "parallel": bool}."""
    tools = list(spec["tools"])
    mode = spec.get("mode", "auto")
    if mode not in ("auto", "required"):
        tools = [t for t in tools if t["name"] == mode]
    calls = alt(*(_call(t["name"], t.get("parameters")) for t in tools))
    block = cat(Lit(OPEN), opt(Lit("\n")), calls, opt(Lit("\n")), Lit(CLOSE))
    blocks = Join(block, opt(Lit("\n")), 1, None if spec.get("parallel", True) else 1)
    if mode == "auto":
        return alt(blocks, _not_prefixed(OPEN), EMPTY)
    return blocks


def tool_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """The system message that offers `tools` (OpenAI function objects) to a template without a
    tool format."""
    lines = [json.dumps({"type": "function", "function": dict(t)}, ensure_ascii=False) for t in tools]
    return ("You may call one or more functions to help with the user's request. The functions are:\n<tools>\n"
            + "\n".join(lines) + "\n</tools>\n\nTo call a function, reply with a JSON object holding its name and "
            "arguments inside <tool_call></tool_call> tags, like this:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def plain_tool_messages(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
                        ) -> list[dict[str, Any]]:
    """Messages for a template without a tool format: the tools offered in the system message,
    assistant calls written as <tool_call> blocks, tool results as user messages."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m.get("role"), m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            blocks = [f"{OPEN}\n" + json.dumps({"name": c["function"]["name"],
                                                "arguments": _arguments(c["function"].get("arguments"))},
                                               ensure_ascii=False) + f"\n{CLOSE}" for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(([content] if content else []) + blocks)})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if tools:
        prompt = tool_system_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _arguments(a: Any) -> Any:
    if isinstance(a, str):
        try:
            return json.loads(a)
        except ValueError:
            return a
    return a if a is not None else {}


def parse_tool_calls(text: str, names: Sequence[str]) -> tuple[str, list[tuple[str, str]]]:
    """The calls in an output: (the text outside them, [(name, arguments as JSON text)]). Blocks
    that do not parse, or name no offered function, stay in the text."""
    calls: list[tuple[str, str]] = []
    rest: list[str] = []
    pos = 0
    for m in _BLOCK.finditer(text):
        try:
            obj = json.loads(m.group(1))
        except ValueError:
            continue
        if not (isinstance(obj, dict) and obj.get("name") in names and isinstance(obj.get("arguments", {}), dict)):
            continue
        rest.append(text[pos:m.start()])
        pos = m.end()
        calls.append((obj["name"], json.dumps(obj.get("arguments", {}), ensure_ascii=False)))
    rest.append(text[pos:])
    return "".join(rest).strip() if calls else text, calls
