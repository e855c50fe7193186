"""Chat templates: realm_web.jinja / realm_web.chat against jinja2 and transformers.

* The default model's template must render exactly like ``tokenizer.apply_chat_template``.
* Real-world templates (Llama 3/3.1/3.2, Qwen2.5, Qwen3, Mistral v0.1/v0.3, Gemma, Phi-3,
  Zephyr, DeepSeek-R1, a multimodal one) must render exactly like jinja2 configured the way
  transformers configures it, on many conversations, including the errors they raise.
* Interpreter details (whitespace control, undefined values, filters, tests, scoping, sandbox)
  are checked against jinja2 too, case by case.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from realm_web.chat import ChatTemplate, load_chat_template
from realm_web.jinja import (
    SecurityError,
    Template,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
)

ROOT = Path(__file__).resolve().parent.parent
BOS, EOS = "<s>", "</s>"

jinja2 = pytest.importorskip("jinja2")


# ------------------------------------------------------------------------------------ reference
def _transformers_env() -> Any:
    """jinja2 set up like transformers' ``_compile_jinja_template`` (utils/chat_template_utils.py)."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class TemplateDict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"underscore-prefixed attribute {name!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


ENV = _transformers_env()


def _outcome(render: Callable[..., str], *args: Any, **kwargs: Any) -> tuple[str, str]:
    """``render(*args, **kwargs)`` as ("ok", text), ("raise_exception", message) or ("error", type name)."""
    try:
        return "ok", render(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        if type(exc) in (jinja2.exceptions.TemplateError, TemplateError) and exc.__cause__ is None:
            return "raise_exception", str(exc)
        return "error", type(exc).__name__


def _same_outcome(ours: tuple[str, str], ref: tuple[str, str]) -> bool:
    if ref[0] == "error":  # jinja2 failed with e.g. TypeError; ours wraps it in a TemplateError
        return ours[0] != "ok"
    return ours == ref


@functools.cache
def _jinja_template(source: str) -> Any:
    return ENV.from_string(source)


@functools.cache
def _chat_template(source: str) -> ChatTemplate:
    return ChatTemplate(source, bos_token=BOS, eos_token=EOS)


def _jinja_render(source: str, **variables: Any) -> tuple[str, str]:
    return _outcome(_jinja_template(source).render, **variables)


def _ours_render(source: str, **variables: Any) -> tuple[str, str]:
    return _outcome(lambda: Template(source).render(**variables))


# ----------------------------------------------------------------------------------- templates
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' "
    "+ message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 "
    "== 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt "
    "%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA31 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Llama 3.2's header: the date comes from strftime_now() unless date_string is given.
LLAMA32 = LLAMA31.replace(
    '    {%- set date_string = "26 Jul 2024" %}',
    '    {%- if strftime_now is defined %}\n        {%- set date_string = strftime_now("%d %b %Y") %}\n'
    '    {%- else %}\n        {%- set date_string = "26 Jul 2024" %}\n    {%- endif %}')

QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN3 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

MISTRAL_V01 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] "
    "== 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}"
)

MISTRAL_V03 = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if (message == user_messages[-1]) and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif "
    "message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

DEEPSEEK_R1 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = "
    "namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}{%- for message in messages "
    "%}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor "
    "%}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set "
    "ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' "
    "and message['content'] is none %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if "
    "not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + "
    "'<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + "
    "'```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif "
    "%}{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else "
    "%}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = "
    "content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif "
    "%}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set "
    "ns.is_output_first = false %}{%- else %}{{'\\n<｜tool▁output▁begin｜>' + message['content'] + "
    "'<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}"
    "{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)

# A multimodal template in the style of Llama 3.2 Vision / Qwen2-VL: content may be a list of parts.
MULTIMODAL = """{%- macro render(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {%- for part in content -%}
            {%- if part.type == 'image' -%}<|image|>
            {%- elif part.type == 'text' -%}{{ part.text }}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{{- bos_token -}}
{%- for message in messages -%}
    <|{{ message.role }}|>{{ render(message.content) | trim }}{{ eos_token }}
{% endfor -%}
{%- if add_generation_prompt %}<|assistant|>{% endif -%}"""

TEMPLATES = {
    "llama3": LLAMA3, "llama3.1": LLAMA31, "llama3.2": LLAMA32, "qwen2.5": QWEN25, "qwen3": QWEN3,
    "mistral-v0.1": MISTRAL_V01, "mistral-v0.3": MISTRAL_V03, "gemma": GEMMA, "phi3": PHI3, "zephyr": ZEPHYR,
    "deepseek-r1": DEEPSEEK_R1, "multimodal": MULTIMODAL,
}

# ------------------------------------------------------------------------------- conversations
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]},
    "return": {"type": "string"}}}]

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "sys"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
    [{"role": "user", "content": "{{ x }} {% if %} {# not a comment #} {%- raw -%} }} {% endfor %}"}],
    [{"role": "user", "content": "  unicode: héllo 世界 🚀 \u00a0\n\nnew\tlines  \n"}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "quotes ' \" \\ <tags> & {'a': 1}"}, {"role": "assistant", "content": "  padded  "}],
    [{"role": "user", "content": "Solve it."},
     {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nThe answer."}, {"role": "user", "content": "More"}],
    # errors in some templates: role alternation, system-only, assistant first, unknown role
    [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    [{"role": "system", "content": "only a system message"}],
    [{"role": "assistant", "content": "I start"}, {"role": "user", "content": "ok"}],
    [{"role": "user", "content": "hi"}, {"role": "narrator", "content": "meanwhile"}],
    # content parts
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}],
]

TOOL_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "system", "content": "You can call tools."}, {"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "tool_calls": [{"id": "call12345", "type": "function",
                                           "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
     {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temp": 21, "sky": "clair"}'},
     {"role": "assistant", "content": "It is 21°C and clear."}, {"role": "user", "content": "Thanks"}],
    [{"role": "user", "content": "Weather in Paris and Köln?"},
     {"role": "assistant", "content": "Checking.", "tool_calls": [
         {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
         {"id": "call00002", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Köln"}}}]},
     {"role": "tool", "tool_call_id": "call00001", "content": "21"},
     {"role": "tool", "tool_call_id": "call00002", "content": "18"}],
    [{"role": "user", "content": "no tool needed"}],
]

TEMPLATE_KWARGS: dict[str, list[dict[str, Any]]] = {
    "llama3.1": [{}, {"date_string": "01 Jan 2025"}, {"tools_in_user_message": False},
                 {"builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]}],
    "llama3.2": [{"date_string": "02 Feb 2025"}, {"strftime_now": lambda fmt: "03 Mar 2025"}],
    "qwen3": [{}, {"enable_thinking": False}, {"enable_thinking": True}],
}


def _render_both(source: str, messages: list[dict[str, Any]], add_generation_prompt: bool,
                 tools: Any = None, **kwargs: Any) -> tuple[tuple[str, str], tuple[str, str]]:
    variables = dict(bos_token=BOS, eos_token=EOS, **kwargs)
    ref = _jinja_render(source, messages=messages, tools=tools, documents=None,
                        add_generation_prompt=add_generation_prompt, **variables)
    chat = _chat_template(source)
    ours = _outcome(chat.render, messages, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs)
    return ours, ref


# ---------------------------------------------------------------------- the default model itself
@pytest.fixture(scope="module")
def hf_tokenizer(model_dir: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(model_dir))


@pytest.mark.model
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_default_model_matches_transformers(model_dir: Path, hf_tokenizer: Any, add_generation_prompt: bool) -> None:
    chat = load_chat_template(model_dir)
    assert chat.source == hf_tokenizer.chat_template
    assert (chat.bos_token, chat.eos_token) == (hf_tokenizer.bos_token, hf_tokenizer.eos_token)
    for messages in CONVERSATIONS[:13]:
        expected = hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                    add_generation_prompt=add_generation_prompt)
        assert chat.render(messages, add_generation_prompt=add_generation_prompt) == expected, messages


@pytest.mark.model
@pytest.mark.parametrize("name", ["qwen3", "llama3.1", "mistral-v0.3"])
def test_transformers_normalization(hf_tokenizer: Any, name: str) -> None:
    """Through transformers itself: None values dropped, reasoning fields aliased, tools, kwargs."""
    special = hf_tokenizer.special_tokens_map
    chat = ChatTemplate(TEMPLATES[name], bos_token=special["bos_token"], eos_token=special["eos_token"],
                        extra={k: v for k, v in special.items() if k not in ("bos_token", "eos_token")})
    cases: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": "because"},
          {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "reasoning_content": "r2"}], {}),
        ([{"role": "user", "content": "q", "name": None}], {"enable_thinking": False}),
        (TOOL_CONVERSATIONS[0], {"tools": TOOLS}),
        (TOOL_CONVERSATIONS[0], {"tools": TOOLS, "date_string": "05 May 2025"}),
    ]
    for messages, kwargs in cases:
        for agp in (False, True):
            ref = _outcome(hf_tokenizer.apply_chat_template, messages, chat_template=TEMPLATES[name],
                           tokenize=False, add_generation_prompt=agp, **kwargs)
            ours = _outcome(chat.render, messages, add_generation_prompt=agp, **kwargs)
            assert _same_outcome(ours, ref), (name, messages, kwargs, ours, ref)


# ------------------------------------------------------------------- real-world templates vs jinja2
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_matches_jinja2(name: str) -> None:
    source = TEMPLATES[name]
    rendered = 0
    for kwargs in TEMPLATE_KWARGS.get(name, [{}]):
        for messages in CONVERSATIONS:
            for agp in (False, True):
                ours, ref = _render_both(source, messages, agp, **kwargs)
                assert _same_outcome(ours, ref), (name, messages, agp, kwargs, ours, ref)
                rendered += ref[0] == "ok"
    assert rendered >= 6  # every template renders most conversations


@pytest.mark.parametrize("name", ["llama3.1", "llama3.2", "qwen2.5", "qwen3", "mistral-v0.3", "deepseek-r1"])
def test_template_with_tools_matches_jinja2(name: str) -> None:
    for kwargs in TEMPLATE_KWARGS.get(name, [{}]):
        for messages in TOOL_CONVERSATIONS:
            for tools in (TOOLS, None):
                for agp in (False, True):
                    ours, ref = _render_both(TEMPLATES[name], messages, agp, tools=tools, **kwargs)
                    assert _same_outcome(ours, ref), (name, messages, tools, agp, kwargs, ours, ref)


def test_template_errors_match() -> None:
    ours, ref = _render_both(MISTRAL_V01, CONVERSATIONS[9], False)
    assert ours == ref == ("raise_exception", "Conversation roles must alternate user/assistant/user/assistant/...")
    ours, ref = _render_both(GEMMA, CONVERSATIONS[1], True)
    assert ours == ref == ("raise_exception", "System role not supported")
    with pytest.raises(TemplateError, match="Only user and assistant roles are supported!"):
        ChatTemplate(MISTRAL_V01).render(CONVERSATIONS[12])


def test_strftime_now_gives_todays_date() -> None:
    chat = ChatTemplate(LLAMA32)
    days = {datetime.now().strftime("%d %b %Y")}
    text = chat.render([{"role": "user", "content": "hi"}])
    days.add(datetime.now().strftime("%d %b %Y"))  # in case the test straddles midnight
    assert any(f"Today Date: {day}\n" in text for day in days)


# ---------------------------------------------------------------------------- interpreter details
JINJA_CASES = [
    "{{ 1 + 2 }}|{{ 7 // 2 }}|{{ 7 / 2 }}|{{ 7 % 3 }}|{{ 2 ** 10 }}|{{ 2**3**2 }}|{{ -2 ** 2 }}|{{ 10 - 3 - 2 }}",
    "{{ 'a' ~ 1 ~ none ~ undefined_var }}|{{ 'x' * 3 }}|{{ [1, 2] + [3] }}|{{ (2 + 3) * 2 }}",
    "{{ \"tab\\there\" }}{{ 'q\\'s' }}{{ \"\\u00e9 \\N{BULLET}\" }}{{ 'a' \"b\" 'c' }}",
    "{{ [1, 2, 3] }}{{ (1,) }}{{ () }}{{ {'a': 1, 'b': [1, 2]} }}{{ 1, 2 }}{{ [1,2,] }}",
    "{{ true }}{{ True }}{{ false }}{{ none }}{{ None }}{{ 1.5 }}{{ 1e3 }}{{ 1_000 }}{{ 0x1F }}",
    ("{% for x in [1,2,3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
    "{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.previtem }}{{ loop.nextitem }};{% endfor %}"),
    "{% for a, b in [(1,2),(3,4)] %}{{ a }}{{ b }}{% endfor %}|{% for k, v in {'x': 1}.items() %}{{ k }}={{ v }}{% endfor %}",
    "{% for x in range(10) if x is odd %}{{ x }}{{ loop.index }},{% else %}none{% endfor %}",
    "{% for x in [] %}{{ x }}{% else %}empty{% endfor %}{% for x in undefined_var %}{{ x }}{% endfor %}",
    "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for i in [1, 2] %}{% for j in 'ab' %}{{ loop.index }}{{ j }}{% endfor %}{{ loop.index }}{% endfor %}",
    ("{% for i in [[1, [2]], [3]] recursive %}<{% if i is iterable %}{{ loop(i) }}{% else %}{{ i }}@{{ loop.depth }}"
    "{% endif %}>{% endfor %}{% for x in 'abc' %}{{ loop.cycle('o', 'e') }}{% endfor %}"),
    "{% if false %}a{% elif 0 %}b{% elif 'x' %}c{% else %}d{% endif %}{% if true %}{% set z = 3 %}{% endif %}{{ z }}",
    "{% set x = 1 %}{% for i in range(2) %}[{{ x }}{% set x = 2 %}{{ x }}]{% endfor %}{{ x }}",
    "{% for i in range(3) %}{% if loop.first %}{% set y = 1 %}{% endif %}[{{ y }}]{% endfor %}",
    "{% set ns = namespace(a=1) %}{% for i in range(3) %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}",
    "{% set x %}block {{ 1 + 1 }}  {% endset %}[{{ x }}]{% set y | upper | trim %}  b  {% endset %}[{{ y }}]",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% with c = a + b %}{{ c }}{% endwith %}{{ c }}",
    ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('bob') }} "
    "{{ greet('al', punct='?') }} {{ greet() }}"),
    "{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 2 %}{{ m() }}",
    "{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}inner{% endcall %}",
    ("{% macro each(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}"
    "{% call(x) each([1,2]) %}[{{ x }}]{% endcall %}"),
    "{% filter upper %}hello {{ 'world' }}{% endfilter %}",
    "{{ '  x  ' | trim }}|{{ 'hello world' | title }}|{{ 'a-b c(d' | title }}|{{ 'hello WORLD' | capitalize }}",
    ("{{ 'ab' | upper }}{{ 'AB' | lower }}|{{ [1,2,3] | length }}|{{ 'abc' | count }}|{{ [3,1,2] | first }}"
    "{{ [3,1,2] | last }}|{{ [] | first }}"),
    ("{{ [1,2,3] | join(', ') }}|{{ [{'a': 1}, {'a': 2}] | join(',', attribute='a') }}|{{ x | default('d') }}"
    "|{{ '' | default('e', true) }}|{{ none | d('n') }}"),
    "{{ {'a': 'é', 'b': [1, 2.5, none, true]} | tojson }}|{{ [1] | tojson(indent=2) }}|{{ '<>&' | tojson }}",
    "{{ 42 | string }}{{ '42' | int + 1 }}{{ '4.5' | int }}{{ 'x' | int }}{{ '4.5' | float }}{{ 'abc' | list }}",
    ("{{ {'a': 1} | items | list }}|{{ 'aXbX' | replace('X', '-') }}|{{ 'aXbX' | replace('X', '-', 1) }}"
    "|{{ 'abc' | reverse }}|{{ [1,2,3] | reverse | list }}"),
    ("{{ [3,1,2] | sort }}|{{ [3,1,2] | sort(reverse=true) }}|{{ ['b','A','c'] | sort }}"
    "|{{ ['b','A','c'] | sort(case_sensitive=true) }}|{{ [1,1,2,'a','A'] | unique | list }}"),
    ("{{ [{'n': 2}, {'n': 1}] | sort(attribute='n') | map(attribute='n') | list }}"
    "|{{ [1, 2] | map('string') | join('') }}|{{ [{'a': {'b': 1}}] | map(attribute='a.b') | list }}"),
    ("{{ [1,2,3,4] | select('odd') | list }}{{ [1,2,3,4] | reject('odd') | list }}{{ [0,1,'',2] | select | list }}"
    "{{ [{'r':'u'},{'r':'b'}] | selectattr('r', 'equalto', 'u') | list }}{{ [{'r':'u'}] | rejectattr('r') | list }}"),
    "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(width='> ', blank=true) }}",
    ("{{ \"<a href='x'>&</a>\" | e }}|{{ '<b>' | safe }}|{{ -3 | abs }}|{{ 2.567 | round(2) }}|{{ 2.5 | round(0, 'floor') }}"
    "|{{ [3, 1, 2] | min }}{{ [3, 1, 2] | max }}{{ [1,2,3] | sum }}{{ '%s-%d' | format('a', 3) }}"),
    ("{{ x is defined }}{{ x is undefined }}{{ none is none }}{{ 'a' is string }}{{ {} is mapping }}{{ [] is iterable }}"
    "{{ 'a' is sequence }}{{ 1 is number }}{{ 1 is integer }}{{ 1.0 is integer }}{{ true is true }}{{ 1 is true }}"),
    ("{{ 3 is equalto 3 }}{{ 'a' is in 'abc' }}{{ 2 is not in [1] }}{{ 4 is divisibleby 2 }}{{ 3 is even }}"
    "{{ x is not defined }}{{ 1 is not none }}{{ true is boolean }}{{ false is false }}{{ 1 is sameas 1 }}"),
    ("{{ 1 < 2 < 3 }}{{ 1 < 3 < 2 }}{{ 1 == 1.0 }}{{ 'a' in 'abc' }}{{ 'z' not in 'abc' }}{{ not 1 }}{{ 1 and 2 }}"
    "{{ 0 or 'x' }}{{ 1 if 0 else 2 }}{{ 'y' if 1 }}[{{ 'y' if 0 }}]{{ not x is defined }}"),
    ("{{ '  Hi  '.strip() }}|{{ 'a,b'.split(',') }}|{{ 'abc'.startswith('a') }}{{ 'abc'.endswith('c') }}"
    "|{{ 'Abc'.upper() }}{{ 'Abc'.lower() }}|{{ 'xax'.replace('x', 'y') }}|{{ 'hello world'.title() }}"
    "|{{ '\\n x'.lstrip() }}|{{ 'x \\n'.rstrip('\\n') }}|{{ '{} and {name}'.format(1, name='n') }}"),
    ("{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b', 2) }}{{ {'a': 1}.keys() | list }}{{ {'a': 1}.values() | list }}"
    "{{ {'a': 1}['a'] }}{{ {'a': 1}.a }}[{{ {'a': 1}.b }}]{{ {'items': 1}.items is defined }}"),
    ("{{ [1,2,3][1:] }}{{ [1,2,3][::-1] }}{{ 'abcdef'[1:4] }}{{ 'abcdef'[-2:] }}{{ [1,2,3][-1] }}[{{ [1,2,3][5] }}]"
    "{{ 'abc'[::2] }}{{ [1,2,3,4][1:3:1] }}{{ [[1, 2]][0].1 }}"),
    "{{ dict(a=1, b=2) }}{{ range(3) | list }}{{ range(1, 10, 3) | list }}{{ x | length }}{{ x | list }}[{{ x }}]",
    "{# comment #}x{#- comment -#}  y  {# c #}\nz",
    "  {% if true %}\n    indented\n  {% endif %}\ndone\n",
    "a  {%- if true -%}  b  {%- endif -%}  c|a {{- 'b' -}} c {{ 'd' }}\ne",
    "line1\n{% if true %}\nline2\n{% endif %}\nline3\n{% for i in [1,2] %}\n  item {{ i }}\n{% endfor %}\nend",
    "{%+ if true %}x{% endif +%}\ny\n  {%+ if true %}x{% endif %}\n",
    "{% raw %}{{ not rendered }}{% endraw %}|   {% raw %}  {{ x }} {% endraw %}\ny",
    "windows\r\nline\rendings\r\n",
    # errors (both must fail)
    "{{ x.y }}", "{{ x['y'] }}", "{{ {}.a.b }}", "{{ x + 1 }}", "{{ 'a' + 1 }}", "{% for x in none %}{% endfor %}",
    "{% set x = [1] %}{{ x.append(2) }}", "{{ raise_exception('boom') }}", "{% set ns = namespace(_x=1) %}",
    "{% set ns = namespace() %}{% set ns._x = 1 %}", "{% set y = 1 %}{% set y.a = 2 %}",
]


@pytest.mark.parametrize("source", JINJA_CASES)
def test_interpreter_matches_jinja2(source: str) -> None:
    ours, ref = _ours_render(source), _jinja_render(source)
    assert _same_outcome(ours, ref), (ours, ref)


@pytest.mark.parametrize(("source", "line"), [
    ("{% if true %}\nx\n{% endfor %}", 3), ("a\nb\n{{ 1 + }}", 3), ("{% for x in y %}\n\n", 1),
    ("\n{{ x | nofilter }}", 2), ("\n\n{{ x is nonsense }}", 3), ("{# open", 1),
    ("\n{{ 'unterminated }}", 2), ("{{ (1, 2] }}", 1), ("{% unknown %}", 1), ("{{ }}", 1),
])
def test_syntax_errors_name_the_line(source: str, line: int) -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        Template(source)
    assert info.value.lineno == line and f"(line {line})" in str(info.value)
    with pytest.raises(jinja2.TemplateSyntaxError):  # jinja2 rejects them too
        ENV.from_string(source)


def test_runtime_errors() -> None:
    with pytest.raises(TemplateError, match="^boom$"):
        Template("{{ raise_exception('boom') }}").render()
    with pytest.raises(UndefinedError, match="'dict object' has no attribute 'content'") as info:
        Template("line 1\n{{ message.content.strip() }}").render(message={})
    assert info.value.lineno == 2
    with pytest.raises(TemplateError, match=r"TypeError.*\(line 1\)"):
        Template("{{ 'a' + 1 }}").render()


def test_sandbox() -> None:
    for source in ("{{ ''.__class__ }}", "{{ x.__class__ }}", "{{ [].__len__ }}", "{{ x.__dict__ }}",
                   "{{ raise_exception.__globals__ }}", "{{ ''.format.__globals__ }}", "{{ x.y }}"):
        assert Template(source).render(x=object()) == ""
    with pytest.raises(UndefinedError):
        Template("{{ x.__class__.__mro__ }}").render(x=object())
    with pytest.raises(TemplateSyntaxError, match="'break' outside of a loop"):
        Template("{% if true %}{% break %}{% endif %}")
    with pytest.raises(SecurityError):
        Template("{{ '{0.__class__}'.format(1) }}").render()
    with pytest.raises(SecurityError):
        Template("{{ x.pop() }}").render(x=[1])
    with pytest.raises(SecurityError):
        Template("{{ range(10**9) | length }}").render()
    data = {"a": [1]}
    assert Template("{% set b = a %}{{ a.copy() }}").render(data) == "[1]" and data == {"a": [1]}


def test_globals_and_variables() -> None:
    template = Template("{{ greeting }} {{ name }}", globals={"greeting": "hi"})
    assert template.render(name="bob") == "hi bob"
    assert template.render({"greeting": "yo"}, name="al") == "yo al"  # variables shadow globals


# ---------------------------------------------------------------------------- ChatTemplate input
@pytest.mark.parametrize(("messages", "error"), [
    ("hello", "messages must be a list"),
    ({"role": "user", "content": "x"}, "messages must be a list"),
    ([["user", "x"]], r"messages\[0\] must be a dict"),
    ([{"content": "x"}], r"messages\[0\]\['role'\] must be a non-empty string"),
    ([{"role": 3, "content": "x"}], "must be a non-empty string"),
    ([{"role": "user"}], r"messages\[0\] has no 'content'"),
    ([{"role": "user", "content": 42}], "must be a string or a list of content parts"),
    ([{"role": "user", "content": [{"text": "x"}]}], r"\['content'\]\[0\] must be a dict with a string 'type'"),
    ([{"role": "user", "content": [{"type": "text", "text": 1}]}], "'text' must be a string"),
    ([{"role": "user", "content": "x", "meta": object()}], r"messages\[0\]\['meta'\] has type object"),
])
def test_bad_messages_raise_value_error(messages: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ChatTemplate(PHI3).render(messages)


def test_bad_tools_raise_value_error() -> None:
    with pytest.raises(ValueError, match="tools must be a list"):
        ChatTemplate(QWEN25).render(CONVERSATIONS[0], tools="get_weather")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"tools\[0\] must be a dict"):
        ChatTemplate(QWEN25).render(CONVERSATIONS[0], tools=[print])  # type: ignore[list-item]


def test_render_does_not_touch_caller_data() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": "r"}]
    snapshot = json.dumps(messages)
    ChatTemplate(QWEN3).render(messages)
    assert json.dumps(messages) == snapshot


def test_load_chat_template(tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}{{ pad_token }}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<B>", "lstrip": False}, "eos_token": "<E>", "pad_token": "<P>"}))
    messages = [{"role": "user", "content": "x"}]
    assert load_chat_template(tmp_path).render(messages) == "<B>x<E><P>"
    (tmp_path / "realm.json").write_text(json.dumps(
        {"chat_template": "chat_template.jinja", "special_tokens": {"bos": "<RB>", "eos": "<RE>", "bos_token_id": 1}}))
    assert load_chat_template(tmp_path).render(messages) == "<RB>x<RE><P>"
    (tmp_path / "chat_template.jinja").unlink()
    with pytest.raises(FileNotFoundError, match="no chat template"):
        load_chat_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "[{{ messages[0].content }}]"}))
    assert load_chat_template(tmp_path).render(messages) == "[x]"


def test_generation_tag_renders_its_body() -> None:  # transformers' assistant-mask extension
    assert Template("a{% generation %}b{{ 1 }}{% endgeneration %}c").render() == "ab1c"


def test_import_is_standard_library_only() -> None:
    code = (
        "import sys, realm_web.chat\n"
        "outside = sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'realm_web', '__main__'})\n"
        "assert not outside, outside\n"
        "assert not {'jinja2', 'markupsafe', 'numpy'} & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-S", "-c", code], check=True, cwd=ROOT)
