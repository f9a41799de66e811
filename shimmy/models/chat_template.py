"""Chat prompts from OpenAI-style messages, rendered with the model's own chat template.

A GGUF usually carries its Hugging Face chat template (``tokenizer.chat_template``, Jinja);
``template_for`` picks it, or a built-in format for models that have none. Rendering
follows transformers' ``apply_chat_template``: same Jinja settings, ``tojson`` filter,
``raise_exception`` and ``strftime_now`` globals, message dicts and ``tools`` variable. It
runs in Jinja's immutable sandbox, since a template comes with a downloaded file and is code.

Conventions for callers:

* ``bos_token``: pass the BOS text only when the model wants one (GGUF
  ``tokenizer.ggml.add_bos_token``), then tokenize the prompt with special-token parsing and
  *without* adding BOS again. Templates (the built-ins included) write BOS themselves.
* ``eos_token``: the EOS text; formats such as zephyr and mistral write it after turns.
* ``stop_strings()`` are text markers; the engine should also stop on the model's
  end-of-generation tokens.

jinja2 is imported on first render, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn


class ChatTemplateError(ValueError):
    """Messages are invalid, or the chat template failed or refused to render them."""


# --- messages -----------------------------------------------------------------------------

ROLES = ("system", "developer", "user", "assistant", "tool")
MEDIA_PART_TYPES = frozenset(
    {"image_url", "input_image", "image", "input_audio", "audio", "video", "file"}
)
# llama-server joins text parts with one newline (common_chat_msg::to_json_oaicompat).
TEXT_PART_SEPARATOR = "\n"


class ToolArguments(dict):
    """A tool call's arguments: the parsed JSON object that still reads as the client's text.

    Templates written for transformers treat ``function.arguments`` as a mapping
    (``arguments | tojson``, ``arguments.items()``); others concatenate the JSON string
    (``'...' + arguments``). This dict serves both: ``str()``, ``~``, ``| string`` and ``+``
    with a string use the original JSON text.
    """

    def __init__(self, parsed: Mapping[str, Any], text: str) -> None:
        super().__init__(parsed)
        self._text = text

    def __str__(self) -> str:
        return self._text

    def __add__(self, other: object) -> str:
        if isinstance(other, str):
            return self._text + other
        return NotImplemented

    def __radd__(self, other: object) -> str:
        if isinstance(other, str):
            return other + self._text
        return NotImplemented


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Validate OpenAI chat ``messages`` and return the plain dicts that templates expect.

    * ``developer`` becomes ``system``; content parts of type ``text`` are joined with
      ``TEXT_PART_SEPARATOR``; media parts are refused (text-only models).
    * An assistant message may have ``tool_calls`` and then null content, which becomes
      ``""`` as in llama-server (templates such as Qwen3's test ``'x' in content``). Each
      call's ``function.arguments`` becomes a ``ToolArguments`` when it is a JSON object.
    * Optional keys (``name``, ``tool_calls``, ``tool_call_id``, ``reasoning_content``) are
      present only when given, since templates test ``'tool_calls' in message``.

    Raises ChatTemplateError naming the offending message and field.
    """
    if not isinstance(messages, list):
        raise ChatTemplateError(f"messages must be an array (got {_json_type(messages)})")
    if not messages:
        raise ChatTemplateError("messages must not be empty")
    return [_normalize_message(message, f"messages[{i}]") for i, message in enumerate(messages)]


def _normalize_message(message: Any, where: str) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise ChatTemplateError(f"{where} must be an object (got {_json_type(message)})")
    role = message.get("role")
    if role not in ROLES:
        raise ChatTemplateError(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})")
    role = "system" if role == "developer" else role
    tool_calls = _tool_calls(message.get("tool_calls"), role, where)
    normalized: dict[str, Any] = {"role": role}
    normalized["content"] = _content(message, where, may_be_null=bool(tool_calls))
    if tool_calls:
        normalized["tool_calls"] = tool_calls
    _copy_string(message, normalized, "name", where)
    if role == "assistant":
        _copy_string(message, normalized, "reasoning_content", where)
    if role == "tool":
        _copy_string(message, normalized, "tool_call_id", where, required=True)
    return normalized


def _content(message: Mapping[str, Any], where: str, *, may_be_null: bool) -> str:
    if "content" not in message and not may_be_null:
        raise ChatTemplateError(f"{where}.content is required")
    content = message.get("content")
    if content is None and may_be_null:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (_text_part(part, f"{where}.content[{i}]") for i, part in enumerate(content))
        return TEXT_PART_SEPARATOR.join(parts)
    raise ChatTemplateError(
        f"{where}.content must be a string or an array of text parts (got {_json_type(content)})"
    )


def _text_part(part: Any, where: str) -> str:
    if not isinstance(part, Mapping):
        raise ChatTemplateError(f"{where} must be an object (got {_json_type(part)})")
    kind = part.get("type")
    if kind in MEDIA_PART_TYPES:
        raise ChatTemplateError(
            f"this model accepts text only: {where} is an {kind!r} part; send text parts only"
        )
    if kind != "text":
        raise ChatTemplateError(f"{where}.type must be 'text' (got {kind!r})")
    text = part.get("text")
    if not isinstance(text, str):
        raise ChatTemplateError(f"{where}.text must be a string (got {_json_type(text)})")
    return text


def _tool_calls(value: Any, role: str, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if role != "assistant":
        raise ChatTemplateError(f"{where}.tool_calls is only allowed on assistant messages")
    if not isinstance(value, list):
        raise ChatTemplateError(f"{where}.tool_calls must be an array (got {_json_type(value)})")
    return [_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(value)]


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise ChatTemplateError(f"{where} must be an object (got {_json_type(call)})")
    if call.get("type", "function") != "function":
        raise ChatTemplateError(f"{where}.type must be 'function' (got {call.get('type')!r})")
    function = call.get("function")
    if not isinstance(function, Mapping):
        raise ChatTemplateError(f"{where}.function must be an object")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ChatTemplateError(f"{where}.function.name must be a non-empty string")
    normalized: dict[str, Any] = {
        "type": "function",
        "function": {"name": name, "arguments": _arguments(function, where)},
    }
    _copy_string(call, normalized, "id", where)
    return normalized


def _arguments(function: Mapping[str, Any], where: str) -> ToolArguments | str:
    arguments = function.get("arguments")
    if isinstance(arguments, ToolArguments):
        return arguments  # already normalized: keep the client's text
    if isinstance(arguments, Mapping):
        return ToolArguments(arguments, json.dumps(arguments, ensure_ascii=False))
    if not isinstance(arguments, str):
        raise ChatTemplateError(
            f"{where}.function.arguments must be a JSON string (got {_json_type(arguments)})"
        )
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments  # models do emit broken JSON; replay it as it was
    return ToolArguments(parsed, arguments) if isinstance(parsed, dict) else arguments


def _copy_string(
    source: Mapping[str, Any],
    target: dict[str, Any],
    key: str,
    where: str,
    *,
    required: bool = False,
) -> None:
    value = source.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value):
        expected = "a non-empty string" if required else "a string"
        raise ChatTemplateError(f"{where}.{key} must be {expected} (got {_json_type(value)})")
    target[key] = value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _normalize_tools(tools: Any) -> list[Any] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise ChatTemplateError(f"tools must be an array (got {_json_type(tools)})")
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise ChatTemplateError(f"tools[{index}] must be an object (got {_json_type(tool)})")
    # transformers passes [] through, but then Llama 3.x templates announce an empty toolbox.
    return tools or None


# --- built-in formats ---------------------------------------------------------------------

# Built-ins are for models without a template of their own: plain conversations only.
_NO_TOOL_MESSAGES = """\
{%- for message in messages -%}
    {%- if message.role == 'tool' or message.tool_calls is defined -%}
        {{- raise_exception('tool calling needs a model with its own chat template') -}}
    {%- endif -%}
{%- endfor -%}
"""

# Sets `system` and `loop_messages`; for formats without a system turn of their own.
_ALTERNATING = """\
{%- if messages[0].role == 'system' -%}
    {%- set system = messages[0].content -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- if not loop_messages -%}
    {{- raise_exception('the conversation needs a user message') -}}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if message.role != ['user', 'assistant'][loop.index0 % 2] -%}
        {{- raise_exception('after an optional first system message, roles must alternate '
            + 'user/assistant/user/...') -}}
    {%- endif -%}
{%- endfor -%}
"""

_CHATML = """\
{{- bos_token -}}
{%- for message in messages -%}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""

# Meta's Llama 3 format; content is trimmed as in Meta's own template.
_LLAMA3 = """\
{{- bos_token -}}
{%- for message in messages -%}
    {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n'
        + message.content | trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
{%- endif -%}
"""

# Llama 2 chat: every user turn opens with BOS; the system prompt sits in <<SYS>> inside the
# first one. The prompt ends with [/INST], which is already the generation prompt.
_LLAMA2 = """\
{%- for message in loop_messages -%}
    {%- if message.role == 'user' -%}
        {%- set content = message.content -%}
        {%- if loop.first and system -%}
            {%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content -%}
        {%- endif -%}
        {{- bos_token + '[INST] ' + content | trim + ' [/INST]' -}}
    {%- else -%}
        {{- ' ' + message.content | trim + ' ' + eos_token -}}
    {%- endif -%}
{%- endfor -%}
"""

# Mistral Instruct as on the v0.1-v0.3 model cards: <s>[INST] q [/INST] a</s>[INST] q2 [/INST]
_MISTRAL = """\
{{- bos_token -}}
{%- for message in loop_messages -%}
    {%- if message.role == 'user' -%}
        {%- set content = message.content -%}
        {%- if loop.first and system -%}
            {%- set content = system + '\\n\\n' + content -%}
        {%- endif -%}
        {{- '[INST] ' + content | trim + ' [/INST]' -}}
    {%- else -%}
        {{- ' ' + message.content | trim + eos_token -}}
    {%- endif -%}
{%- endfor -%}
"""

# Gemma 1-3: no system turn (Google's template folds it into the first user turn) and the
# assistant is called "model".
_GEMMA = """\
{{- bos_token -}}
{%- for message in loop_messages -%}
    {%- set role = 'model' if message.role == 'assistant' else 'user' -%}
    {%- set prefix = system + '\\n\\n' if loop.first and system else '' -%}
    {{- '<start_of_turn>' + role + '\\n' + prefix + message.content | trim
        + '<end_of_turn>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\\n' -}}
{%- endif -%}
"""

_PHI3 = """\
{{- bos_token -}}
{%- for message in messages -%}
    {{- '<|' + message.role + '|>\\n' + message.content + '<|end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|assistant|>\\n' -}}
{%- endif -%}
"""

_ZEPHYR = """\
{{- bos_token -}}
{%- for message in messages -%}
    {{- '<|' + message.role + '|>\\n' + message.content + eos_token + '\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|assistant|>\\n' -}}
{%- endif -%}
"""

# Vicuna v1.1 as FastChat writes it, default system prompt included.
_VICUNA = """\
{{- bos_token -}}
{{- (system or 'A chat between a curious user and an artificial intelligence assistant. '
    + "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    + ' ' -}}
{%- for message in loop_messages -%}
    {%- if message.role == 'user' -%}
        {{- 'USER: ' + message.content + ' ' -}}
    {%- else -%}
        {{- 'ASSISTANT: ' + message.content + eos_token -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'ASSISTANT:' -}}
{%- endif -%}
"""

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": _NO_TOOL_MESSAGES + _CHATML,
    "llama3": _NO_TOOL_MESSAGES + _LLAMA3,
    "llama2": _NO_TOOL_MESSAGES + _ALTERNATING + _LLAMA2,
    "mistral": _NO_TOOL_MESSAGES + _ALTERNATING + _MISTRAL,
    "gemma": _NO_TOOL_MESSAGES + _ALTERNATING + _GEMMA,
    "phi3": _NO_TOOL_MESSAGES + _PHI3,
    "zephyr": _NO_TOOL_MESSAGES + _ZEPHYR,
    "vicuna": _NO_TOOL_MESSAGES + _ALTERNATING + _VICUNA,
}

# End of the assistant's turn, plus the start of a user turn for formats whose turns end with
# the generic EOS (a model that misses EOS runs on into "[INST]" or "USER:").
_BUILTIN_STOPS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_end|>",),
    "llama3": ("<|eot_id|>", "<|eom_id|>"),
    "llama2": ("</s>", "[INST]"),
    "mistral": ("</s>", "[INST]"),
    "gemma": ("<end_of_turn>",),
    "phi3": ("<|end|>", "<|endoftext|>"),
    "zephyr": ("</s>", "<|user|>"),
    "vicuna": ("</s>", "USER:"),
}

# End-of-turn markers recognised in a model's own template, in the order reported.
_END_MARKERS = (
    "<|im_end|>",  # ChatML: Qwen, SmolLM, Hermes, ...
    "<|eot_id|>",  # Llama 3
    "<|eom_id|>",  # Llama 3.1 "end of message", waiting for a tool result
    "<end_of_turn>",  # Gemma 1-3
    "<turn|>",  # Gemma 4
    "<|end|>",  # Phi-3
    "<|END_OF_TURN_TOKEN|>",  # Command-R
    "<｜end▁of▁sentence｜>",  # DeepSeek (full-width bars)
    "<|end_of_text|>",  # Granite
    "<|endoftext|>",
    "</s>",
    "[INST]",  # Llama 2 / Mistral: the next user turn
)
# gpt-oss (harmony): <|end|> only closes the analysis channel; the turn ends at these two.
_HARMONY_CHANNEL = "<|channel|>"
_HARMONY_STOPS = ("<|return|>", "<|call|>")

_TOOLS_WORD = re.compile(r"\btools\b")


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template: ``name`` is "gguf" (the model's own) or a BUILTIN_TEMPLATES key."""

    source: str
    name: str

    @property
    def supports_tools(self) -> bool:
        return _TOOLS_WORD.search(self.source) is not None

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        bos_token: str = "",
        eos_token: str = "",
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt for ``messages`` (checked with ``normalize_messages`` first).

        ``extra`` become template variables (``enable_thinking``, ``date_string``, ...).
        Raises ChatTemplateError when ``tools`` are given but the template has no use for them.
        """
        tools = _normalize_tools(tools)
        if tools and not self.supports_tools:
            raise ChatTemplateError(f"this model's chat template ({self.name}) has no tools")
        context = {
            **extra,
            "messages": normalize_messages(messages),
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_generation_prompt": add_generation_prompt,
            "tools": tools,
        }
        return _render(_compile(self.source), context, self.name)

    def stop_strings(self) -> list[str]:
        """Text that ends the assistant's turn: stop there and keep it out of the output."""
        if BUILTIN_TEMPLATES.get(self.name) == self.source:
            return list(_BUILTIN_STOPS[self.name])
        if _HARMONY_CHANNEL in self.source:
            return [stop for stop in _HARMONY_STOPS if stop in self.source]
        return [marker for marker in _END_MARKERS if marker in self.source]


def _render(template: Any, context: dict[str, Any], name: str) -> str:
    from jinja2.sandbox import SecurityError

    try:
        return template.render(context)
    except ChatTemplateError:
        raise
    except SecurityError as error:
        raise ChatTemplateError(
            f"chat template ({name}) attempted an unsafe operation: {error}"
        ) from error
    except Exception as error:  # a template is foreign code: any failure is its failure
        raise ChatTemplateError(
            f"chat template ({name}) failed to render: {type(error).__name__}: {error}"
        ) from error


# --- template choice ----------------------------------------------------------------------

# Special tokens that give the format away; the first found wins (Hermes-style fine-tunes
# of Llama 3 add <|im_start|> and use ChatML).
_VOCAB_HINTS = (
    ("<|im_start|>", "chatml"),
    ("<|start_header_id|>", "llama3"),
    ("<|eot_id|>", "llama3"),
    ("<start_of_turn>", "gemma"),
    ("<|assistant|>", "phi3"),
    ("[INST]", "mistral"),
)
_NAME_HINTS = (
    (("qwen", "hermes", "dolphin"), "chatml"),
    (("zephyr",), "zephyr"),
    (("vicuna",), "vicuna"),
    (("llama-3", "llama3", "llama 3"), "llama3"),
    (("llama-2", "llama2", "llama 2"), "llama2"),
    (("mistral", "mixtral", "ministral", "codestral", "devstral"), "mistral"),
    (("phi-3", "phi3"), "phi3"),
)
_ARCHITECTURES = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "llama": "llama2",
    "mistral3": "mistral",
    "phi3": "phi3",
    "phimoe": "phi3",
}
DEFAULT_BUILTIN = "chatml"


def template_for(
    gguf_template: str | None,
    architecture: str | None = None,
    model_name: str | None = None,
    vocab_tokens: Iterable[str] = (),
) -> ChatTemplate:
    """The model's own template if it has one, else the built-in that fits it best.

    Fallback evidence, strongest first: special tokens in the vocabulary, the model's name,
    its architecture; ChatML when nothing matches.
    """
    if gguf_template and gguf_template.strip():
        return ChatTemplate(source=gguf_template, name="gguf")
    name = (
        _hint_from_vocab(vocab_tokens)
        or _hint_from_name((model_name or "").lower())
        or _hint_from_architecture((architecture or "").lower())
        or DEFAULT_BUILTIN
    )
    return ChatTemplate(source=BUILTIN_TEMPLATES[name], name=name)


def _hint_from_vocab(vocab_tokens: Iterable[str]) -> str | None:
    wanted = {token for token, _ in _VOCAB_HINTS}
    present = {token for token in vocab_tokens if token in wanted}
    return next((name for token, name in _VOCAB_HINTS if token in present), None)


def _hint_from_name(model_name: str) -> str | None:
    for needles, name in _NAME_HINTS:
        if any(needle in model_name for needle in needles):
            return name
    return None


def _hint_from_architecture(architecture: str) -> str | None:
    if architecture.startswith("qwen"):
        return "chatml"
    return _ARCHITECTURES.get(architecture)


# --- Jinja --------------------------------------------------------------------------------


def _raise_exception(message: Any) -> NoReturn:
    raise ChatTemplateError(str(message))


def _strftime_now(pattern: str) -> str:
    return datetime.now().strftime(pattern)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' filter: unlike Jinja's own, no HTML escaping, and keys stay in order.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    from jinja2 import TemplateSyntaxError

    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as error:
        raise ChatTemplateError(
            f"chat template does not compile (line {error.lineno}): {error.message}"
        ) from error


@functools.cache
def _environment() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class StrictSandbox(ImmutableSandboxedEnvironment):
        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            # The stock sandbox returns an Undefined that prints as "": fail loudly instead.
            raise SecurityError(
                f"access to attribute {attribute!r} of a {type(obj).__name__!r} is not allowed"
            )

    environment = StrictSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", _generation_tag()],
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment


def _generation_tag() -> type:
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        """``{% generation %}...{% endgeneration %}``: transformers marks the assistant's text
        with it for training masks; for a prompt the body simply renders."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return GenerationTag
