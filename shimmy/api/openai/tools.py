"""Tools: checking ``tools``/``tool_choice`` and reading tool calls out of model output."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from shimmy.errors import invalid_request

# How models write a call when left free (tool_choice "auto"): Hermes/Qwen tags,
# Mistral's marker, or a bare JSON object as Llama 3.x templates ask for.
_TAGGED = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)
_OPENERS = ("<tool_call>", "[TOOL_CALLS]", "{")


@dataclass(frozen=True, slots=True)
class ToolPlan:
    tools: list[dict[str, Any]] | None  # what the template is shown
    forced: str | None  # "required", a function name, or None
    parse_calls: bool  # look for calls in free output (tool_choice "auto")


def plan(body: dict[str, Any]) -> ToolPlan:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise invalid_request("'tool_choice' needs 'tools'", param="tool_choice")
        return ToolPlan(None, None, False)
    names = _check_tools(tools)
    if choice in (None, "auto"):
        return ToolPlan(tools, None, True)
    if choice == "none":
        return ToolPlan(None, None, False)
    if choice == "required":
        return ToolPlan(tools, "required", False)
    name = _named_choice(choice)
    if name not in names:
        raise invalid_request(f"'tool_choice' names '{name}', which is not in 'tools'",
                              param="tool_choice")
    return ToolPlan(tools, name, False)


def _check_tools(tools: Any) -> set[str]:
    if not isinstance(tools, list):
        raise invalid_request("'tools' must be an array", param="tools")
    names = set()
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise invalid_request(f"{where} must be {{'type': 'function', 'function': {{...}}}}",
                                  param="tools")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid_request(f"{where}.function.name must be a string", param="tools")
        parameters = function.get("parameters", {})
        if not isinstance(parameters, dict):
            raise invalid_request(f"{where}.function.parameters must be a JSON schema object",
                                  param="tools")
        names.add(function["name"])
    return names


def _named_choice(choice: Any) -> str:
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"]
    raise invalid_request("'tool_choice' must be 'none', 'auto', 'required' or "
                          "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")


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
            plain.append(message)
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


def new_call(name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": f"call_{secrets.token_hex(12)}", "type": "function",
            "function": {"name": name, "arguments": text}}


def forced_call(text: str) -> dict[str, Any]:
    """The call a grammar-constrained answer (``{"name", "arguments"}``) spells."""
    call = json.loads(text)
    return new_call(call["name"], call["arguments"])


def may_be_call(text: str) -> bool:
    """Whether free output could still turn out to be a tool call (hold it back)."""
    stripped = text.lstrip()
    return any(stripped.startswith(o) or o.startswith(stripped) for o in _OPENERS)


def parse_calls(text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls written in free output, if the whole answer is calls; else []."""
    names = {tool["function"]["name"] for tool in tools}
    stripped = text.strip()
    candidates = [m.group(1) for m in _TAGGED.finditer(stripped)]
    if candidates:
        leftover = _TAGGED.sub("", stripped).strip()
        if leftover:
            return []
    elif stripped.startswith("[TOOL_CALLS]"):
        candidates = _json_list(stripped.removeprefix("[TOOL_CALLS]").strip())
    elif stripped.startswith("{"):
        candidates = [stripped]
    calls = [_call(candidate, names) for candidate in candidates]
    return calls if calls and all(calls) else []


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return []
    items = value if isinstance(value, list) else [value]
    return [json.dumps(item) for item in items]


def _call(text: str, names: set[str]) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return new_call(value["name"], arguments)
