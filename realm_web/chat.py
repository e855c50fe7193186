"""Chat templates: turn a conversation into the prompt text a model was trained on.

Renders a Hugging Face chat template (Jinja) with :mod:`realm_web.jinja`, so the output is
the same as ``tokenizer.apply_chat_template(messages, tokenize=False, ...)`` while needing
only the standard library.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .jinja import Template, TemplateError

__all__ = ["ChatTemplate", "TemplateError", "load_chat_template"]

# Names a message's reasoning may come under; transformers copies it to the first two.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# Special tokens (tokenizer_config.json keys) that transformers passes to every template.
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class ChatTemplate:
    """A compiled chat template plus the special tokens it is rendered with."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "",
                 extra: Mapping[str, Any] | None = None) -> None:
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        self.extra: dict[str, Any] = dict(extra or {})
        self._template = Template(source)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
               tools: Sequence[Mapping[str, Any]] | None = None,
               documents: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any) -> str:
        """The prompt for ``messages``; keyword arguments become template variables
        (e.g. ``enable_thinking=False``, ``date_string="26 Jul 2024"``).

        Raises ``ValueError`` for malformed messages or tools, and
        :class:`~realm_web.jinja.TemplateError` when the template itself rejects the input
        (e.g. ``raise_exception("Conversation roles must alternate ...")``).
        """
        variables: dict[str, Any] = {**self.extra, "bos_token": self.bos_token, "eos_token": self.eos_token}
        variables.update({key: _plain(value, key, strict=False) for key, value in kwargs.items()})
        variables.update(
            messages=_prepare_messages(messages),
            tools=None if tools is None else _prepare_list(tools, "tools"),
            documents=None if documents is None else _prepare_list(documents, "documents"),
            add_generation_prompt=add_generation_prompt,
        )
        return self._template.render(variables)


def _plain(value: Any, where: str, strict: bool = True) -> Any:
    """A copy of ``value`` made of plain JSON-like types (dict, list, tuple, str, numbers)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # subclasses (enums, ...) back to the base type, like transformers
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {key: _plain(item, f"{where}[{key!r}]", strict) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(item, f"{where}[{i}]", strict) for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if strict:
        raise ValueError(f"{where} has type {type(value).__name__}; chat data must be JSON-like "
                         "(dict, list, str, int, float, bool or None)")
    return value


def _prepare_list(items: Any, name: str) -> list[Any]:
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise ValueError(f"{name} must be a list of JSON-schema dicts, got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"{name}[{i}] must be a dict, got {type(item).__name__}")
    return [_plain(item, f"{name}[{i}]") for i, item in enumerate(items)]


def _check_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, (list, tuple)):
        raise ValueError(f"{where} must be a string or a list of content parts, got {type(content).__name__}")
    for i, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise ValueError(f"{where}[{i}] must be a dict with a string 'type', e.g. "
                             "{'type': 'text', 'text': '...'}")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise ValueError(f"{where}[{i}] is a text part, so its 'text' must be a string")


def _prepare_messages(messages: Any) -> list[dict[str, Any]]:
    """Validate messages and normalize them the way transformers does before rendering."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts, "
                         f"got {type(messages).__name__}")
    chat = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise ValueError(f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}")
        if any(not isinstance(key, str) for key in message):
            raise ValueError(f"{where} has a non-string key")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"{where}['role'] must be a non-empty string, got {role!r}")
        content = message.get("content")
        if content is not None:
            _check_content(content, f"{where}['content']")
        elif not message.get("tool_calls"):
            raise ValueError(f"{where} has no 'content' (only assistant messages with 'tool_calls' may omit it)")
        # transformers drops None values (e.g. OpenAI's content=None) and aliases reasoning fields
        plain = {key: _plain(value, f"{where}[{key!r}]") for key, value in message.items() if value is not None}
        reasoning = next((plain[key] for key in _REASONING_FIELDS if key in plain), None)
        if reasoning is not None:
            plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
        chat.append(plain)
    return chat


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template_source(model_dir: Path, config: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    name = manifest.get("chat_template")
    path = model_dir / (name if isinstance(name, str) else "chat_template.jinja")
    if path.is_file():
        return path.read_text(encoding="utf-8")
    source = config.get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        source = next((t.get("template") for t in source if isinstance(t, Mapping) and t.get("name") == "default"), None)
    if not isinstance(source, str):
        raise FileNotFoundError(f"no chat template in {model_dir}: expected chat_template.jinja "
                                "(or a 'chat_template' string in tokenizer_config.json)")
    return source


def load_chat_template(model_dir: str | os.PathLike[str]) -> ChatTemplate:
    """The chat template of a model directory.

    The source comes from ``chat_template.jinja`` (or the file ``realm.json`` names), else from
    ``tokenizer_config.json``; the special tokens from ``realm.json``
    (``"special_tokens": {"bos": ..., "eos": ...}``) when it has them, else from
    ``tokenizer_config.json``.
    """
    directory = Path(model_dir)
    config, manifest = _read_json(directory / "tokenizer_config.json"), _read_json(directory / "realm.json")
    tokens = {key: text for key in _SPECIAL_TOKENS if (text := _token_text(config.get(key))) is not None}
    realm_tokens = manifest.get("special_tokens")
    if isinstance(realm_tokens, Mapping):
        for short, value in realm_tokens.items():
            if f"{short}_token" in _SPECIAL_TOKENS and (text := _token_text(value)) is not None:
                tokens[f"{short}_token"] = text
    bos, eos = tokens.pop("bos_token", ""), tokens.pop("eos_token", "")
    return ChatTemplate(_template_source(directory, config, manifest), bos_token=bos, eos_token=eos, extra=tokens)
