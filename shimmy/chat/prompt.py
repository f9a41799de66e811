"""A chat request as the model's prompt: its chat template, tools and thinking switches.

Templates that know tools get them as the ``tools`` variable; templates that do not get
them described in the system message, and tool turns rewritten as plain turns.
"""

from __future__ import annotations

import json
from typing import Any

from shimmy.chat.request import ChatRequest
from shimmy.engine.loaded import LoadedModel
from shimmy.errors import invalid_request
from shimmy.models.chat_template import ChatTemplate, ChatTemplateError, normalize_messages

# template variables that switch thinking on or off, by the names templates use
_THINKING_SWITCHES = ("enable_thinking", "thinking")
_THINKING_MARKERS = ("<think>", "enable_thinking", "<|channel|>", "reasoning_content")


def template_thinks(template: ChatTemplate) -> bool:
    """Whether the template formats a model that thinks before it answers."""
    return any(marker in template.source for marker in _THINKING_MARKERS)


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools, checked: each a function with a name and object parameters."""
    if not isinstance(tools, list):
        raise invalid_request("'tools' must be an array", param="tools")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise invalid_request(f"{where} must be {{'type': 'function', 'function': {{...}}}}",
                                  param="tools")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not function["name"]:
            raise invalid_request(f"{where}.function.name must be a non-empty string",
                                  param="tools")
        if not isinstance(function.get("parameters", {}), dict):
            raise invalid_request(f"{where}.function.parameters must be a JSON schema object",
                                  param="tools")
        if function["name"] in names:
            raise invalid_request(f"{where}: the tool name {function['name']!r} is repeated",
                                  param="tools")
        names.add(function["name"])
    return tools


def offered_tools(request: ChatRequest) -> list[dict[str, Any]] | None:
    """The tools the model is shown: none when the request turns tools off."""
    if not request.tools or request.tool_choice == "none":
        return None
    return request.tools


def render(model: LoadedModel, request: ChatRequest) -> tuple[str, list[int]]:
    """The prompt's text and tokens, the prefill (if any) appended. Blocking: long
    prompts take a while, so callers run this off the event loop."""
    template = model.chat_template
    tools = offered_tools(request)
    try:
        messages = normalize_messages(request.messages)
        if not template.supports_tools:
            messages = without_tool_roles(messages)
            if tools:
                messages, tools = describe_in_system(messages, tools), None
        engine_model = model.model
        text = template.render(
            messages,
            bos_token=engine_model.token_text(engine_model.bos_token),
            eos_token=engine_model.token_text(engine_model.eos_token),
            add_generation_prompt=True,
            tools=tools,
            **_template_variables(template, request),
        )
    except ChatTemplateError as exc:
        raise invalid_request(str(exc), param="messages") from None
    tokens = model.tokenize(text, special=True)
    if request.prefill:
        # the prefill continues the answer: no start token, no control tokens parsed
        tokens += engine_model.tokenize(request.prefill, False, False)
        text += request.prefill
    return text, tokens


def _template_variables(template: ChatTemplate, request: ChatRequest) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    if request.thinking is not None:
        for switch in _THINKING_SWITCHES:
            if switch in template.source:
                variables[switch] = request.thinking
    if request.reasoning_effort is not None and "reasoning_effort" in template.source:
        variables["reasoning_effort"] = request.reasoning_effort
    variables.update(request.template_kwargs)
    return variables


def describe_in_system(messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools as instructions in the system message, for templates without tools."""
    listing = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    text = ("You can call these functions. To call one, answer only with a JSON object "
            '{"name": <function name>, "arguments": <its arguments>}.\n' + listing)
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def without_tool_roles(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A tool conversation as plain turns, for templates that know no tool messages:
    calls become the assistant's JSON, results become user turns."""
    plain = []
    for message in messages:
        if message["role"] == "tool":
            plain.append({"role": "user", "content":
                          f"Result of tool call {message.get('tool_call_id', '')}: "
                          f"{message['content']}"})
        elif message.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": str(c["function"]["arguments"])}
                     for c in message["tool_calls"]]
            text = "\n".join(json.dumps(c, ensure_ascii=False) for c in calls)
            content = f"{message['content']}\n{text}" if message.get("content") else text
            plain.append({"role": "assistant", "content": content})
        else:
            plain.append({k: v for k, v in message.items() if k != "reasoning_content"})
    return _merge_same_roles(plain)


def _merge_same_roles(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # strict templates (Gemma, Llama 2) demand alternating turns
    merged: list[dict[str, Any]] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"] != "system":
            merged[-1] = {**merged[-1],
                          "content": f"{merged[-1]['content']}\n\n{message['content']}"}
        else:
            merged.append(message)
    return merged
