"""An Anthropic Messages body as the chat layer's ``ChatRequest``.

Anthropic's content blocks become OpenAI-style messages: text blocks join into the turn's
content, an assistant's ``tool_use`` blocks become its ``tool_calls`` (the arguments are
the JSON of ``input``) and ``thinking`` its ``reasoning_content``; a user's
``tool_result`` blocks become ``tool`` messages placed right after the calls they answer.
Consecutive turns of one role are combined, and a last assistant turn is a prefill that
the answer continues. A ``system`` message among the turns (Claude Code's
mid-conversation system beta) joins the system prompt when it comes first, else the user
turn at its place as a ``<system-reminder>``, so the prompt's prefix stays the same from
one request to the next. What a local server cannot honour (``cache_control``,
``metadata``, ``service_tier``, ...) is ignored; images and documents are refused by name.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from shimmy.api import params
from shimmy.chat.request import ChatRequest
from shimmy.errors import ApiError, invalid_request
from shimmy.models.chat_template import TEXT_PART_SEPARATOR

log = logging.getLogger("shimmy.api")

ROLES = ("user", "assistant", "system")
SESSION_HEADER = "x-claude-code-session-id"
EFFORTS = ("low", "medium", "high")
# blocks that carry no text a prompt can hold: refused by name, never dropped
_UNREADABLE = "{where}: shimmy serves text models only; send the content as text"
_skipped_tools: set[str] = set()  # server tool types already logged as left out


def chat_request(body: dict[str, Any], headers: dict[str, str],
                 need_max_tokens: bool = True) -> ChatRequest:
    """The chat layer's request for a Messages body (model and stream aside)."""
    messages = conversation(body.get("messages"))
    prefill = _prefill(messages)
    system = body.get("system")
    if system is not None and system != "":
        _add_system(messages, text_of(system, "system", "system"), first=True)
    tools = function_tools(body.get("tools"))
    choice, parallel = tool_choice(body.get("tool_choice"))
    session = headers.get(SESSION_HEADER)
    return ChatRequest(
        messages=messages,
        tools=tools or None,
        tool_choice=choice,  # one that forces a call without tools: the chat layer's 400
        parallel_tool_calls=parallel,
        max_tokens=max_tokens(body, need_max_tokens),
        sampling=_sampling(body),
        thinking=thinking(body.get("thinking")),
        reasoning_effort=_effort(body.get("output_config")),
        stop=params.stop_strings(body, "stop_sequences"),
        prefill=prefill,
        ignore_eos=params.boolean(body, "ignore_eos", False),
        session=session or None,
    )


def max_tokens(body: dict[str, Any], required: bool) -> int | None:
    """The client's budget; more than the context leaves is clamped by the chat layer."""
    if body.get("max_tokens") is None:
        if required:
            raise invalid_request("'max_tokens' is required", param="max_tokens")
        return None
    return params.integer(body, "max_tokens", 0, 1, 10_000_000)


def _sampling(body: dict[str, Any]) -> Any:
    params.number(body, "temperature", 1.0, 0.0, 1.0)  # Anthropic's range is narrower
    return params.sampling(body, temperature=1.0, top_p=1.0)


def thinking(value: Any) -> bool | None:
    """``{"type": "enabled", "budget_tokens": N}`` on, ``disabled`` off, ``adaptive`` (what
    Claude Code sends) or none: the template's default."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "enabled":
        return True
    if kind == "disabled":
        return False
    if kind == "adaptive":
        return None
    raise invalid_request("'thinking.type' must be 'enabled', 'disabled' or 'adaptive'",
                          param="thinking")


def _effort(config: Any) -> str | None:
    """``output_config.effort`` as the template's ``reasoning_effort``, where it fits."""
    effort = config.get("effort") if isinstance(config, dict) else None
    return effort if effort in EFFORTS else None


# --- tools ---


def function_tools(value: Any) -> list[dict[str, Any]]:
    """Anthropic's custom tools as OpenAI function tools; server tools (web search, code
    execution: ``type`` without an ``input_schema``) are left out and logged once."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_request("'tools' must be an array", param="tools")
    tools = []
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise invalid_request(f"'{where}' must be an object", param="tools")
        kind = tool.get("type")
        if kind not in (None, "custom") and "input_schema" not in tool:
            _skip_server_tool(str(kind))
            continue
        tools.append(_function_tool(tool, where))
    return tools


def _function_tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise invalid_request(f"'{where}.name' must be a non-empty string", param="tools")
    if not isinstance(schema, dict):
        raise invalid_request(f"'{where}.input_schema' must be a JSON schema object",
                              param="tools")
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _skip_server_tool(kind: str) -> None:
    if kind not in _skipped_tools:
        _skipped_tools.add(kind)
        log.warning("tools of type '%s' run on Anthropic's servers; shimmy leaves them out",
                    kind)


def tool_choice(value: Any) -> tuple[str, bool]:
    """The chat layer's tool choice and whether calls may come in parallel."""
    if value is None:
        return "auto", True
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise invalid_request("'tool_choice.type' must be 'auto', 'any', 'tool' or 'none'",
                              param="tool_choice")
    parallel = not params.boolean(value, "disable_parallel_tool_use", False)
    if kind == "tool":
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_request("'tool_choice.name' must name a tool", param="tool_choice")
        return name, parallel
    return {"any": "required"}.get(kind, kind), parallel


# --- messages ---


def conversation(value: Any) -> list[dict[str, Any]]:
    """Anthropic messages as OpenAI-style ones, consecutive turns of a role combined and
    each tool result right after the call it answers."""
    if not isinstance(value, list) or not value:
        raise invalid_request("'messages' must be a non-empty array", param="messages")
    chat: list[dict[str, Any]] = []
    calls: dict[str, str] = {}  # tool_use id -> tool name, of the turns so far
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        role = _role(message, where)
        if role == "assistant":
            _add_assistant(chat, _assistant_turn(message["content"], where), calls)
        elif role == "system":
            _add_system(chat, text_of(message["content"], f"{where}.content", "messages"))
        else:
            results, texts = _user_turn(message["content"], where, calls)
            _add_user(chat, results, texts if texts or results else [""])  # kept if empty
    if not chat:
        raise invalid_request("'messages' has nothing but empty system text", param="messages")
    return chat


def _role(message: Any, where: str) -> str:
    if not isinstance(message, dict):
        raise invalid_request(f"'{where}' must be an object", param="messages")
    role = message.get("role")
    if role not in ROLES:
        raise invalid_request(f"'{where}.role' must be 'user', 'assistant' or 'system', "
                              f"not {role!r}", param="messages")
    if "content" not in message:
        raise invalid_request(f"'{where}.content' is required", param="messages")
    return role


def _blocks(content: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """``(where, block)`` of a turn's content; a string is one text block."""
    if isinstance(content, str):
        return [(where, {"type": "text", "text": content})]
    if not isinstance(content, list):
        raise invalid_request(f"'{where}' must be a string or an array of content blocks",
                              param="messages")
    blocks = []
    for index, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise invalid_request(f"'{where}[{index}]' must be a content block with a 'type'",
                                  param="messages")
        blocks.append((f"{where}[{index}]", block))
    return blocks


def _assistant_turn(content: Any, where: str) -> dict[str, Any]:
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for at, block in _blocks(content, f"{where}.content"):
        kind = block["type"]
        if kind == "text":
            texts.append(_string(block, "text", at))
        elif kind == "thinking":
            thoughts.append(_string(block, "thinking", at))
        elif kind == "redacted_thinking":
            continue  # encrypted by Anthropic: nothing a local model can read
        elif kind == "tool_use":
            tool_calls.append(_tool_call(block, at))
        else:
            raise _unreadable(kind, at)
    turn: dict[str, Any] = {"role": "assistant", "content": TEXT_PART_SEPARATOR.join(texts)}
    if thoughts:
        turn["reasoning_content"] = TEXT_PART_SEPARATOR.join(thoughts)
    if tool_calls:
        turn["tool_calls"] = tool_calls
    return turn


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise invalid_request(f"'{where}.id' must be a non-empty string", param="messages")
    if not isinstance(name, str) or not name:
        raise invalid_request(f"'{where}.name' must be a non-empty string", param="messages")
    if not isinstance(arguments, dict):
        raise invalid_request(f"'{where}.input' must be an object", param="messages")
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _user_turn(content: Any, where: str,
               calls: dict[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The turn's tool results (as ``tool`` messages) and its texts."""
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    for at, block in _blocks(content, f"{where}.content"):
        kind = block["type"]
        if kind == "text":
            texts.append(_string(block, "text", at))
        elif kind == "tool_result":
            results.append(_tool_message(block, at, calls))
        else:
            raise _unreadable(kind, at)
    return results, texts


def _tool_message(block: dict[str, Any], where: str, calls: dict[str, str]) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid_request(f"'{where}.tool_use_id' must be a non-empty string",
                              param="messages")
    if call_id not in calls:
        raise invalid_request(f"'{where}' answers tool_use_id '{call_id}', but no earlier "
                              "assistant turn has a tool_use block with that id",
                              param="messages")
    content = block.get("content") or ""
    text = content if isinstance(content, str) else text_of(content, f"{where}.content",
                                                            "messages")
    if params.boolean(block, "is_error", False):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "name": calls[call_id], "content": text}


def _add_assistant(chat: list[dict[str, Any]], turn: dict[str, Any],
                   calls: dict[str, str]) -> None:
    for call in turn.get("tool_calls", ()):
        calls[call["id"]] = call["function"]["name"]
    last = chat[-1] if chat else None
    if last is None or last["role"] != "assistant":
        chat.append(turn)
        return
    last["content"] = _join(last["content"], turn["content"])
    if "reasoning_content" in turn:
        last["reasoning_content"] = _join(last.get("reasoning_content", ""),
                                          turn["reasoning_content"])
    if "tool_calls" in turn:
        last["tool_calls"] = last.get("tool_calls", []) + turn["tool_calls"]


def _add_system(chat: list[dict[str, Any]], text: str, first: bool = False) -> None:
    """System text: the request's own ``system`` goes first; a system turn joins the
    leading system turn while only system turns came before it, else it is a reminder
    in the user turn at its place."""
    if not text:
        return
    leading = chat[0] if chat and chat[0]["role"] == "system" else None
    if first:
        if leading is not None:
            leading["content"] = _join(text, leading["content"])
        else:
            chat.insert(0, {"role": "system", "content": text})
    elif all(message["role"] == "system" for message in chat):
        if leading is not None:
            leading["content"] = _join(leading["content"], text)
        else:
            chat.append({"role": "system", "content": text})
    else:
        _add_user(chat, [], [f"<system-reminder>\n{text}\n</system-reminder>"])


def _add_user(chat: list[dict[str, Any]], results: list[dict[str, Any]],
              texts: list[str]) -> None:
    """Tool results in the order of their calls, right after them (before any user text
    since), then the text as a user turn."""
    order = {call["id"]: n for message in chat for n, call in
             enumerate(message.get("tool_calls", ()))}
    at = len(chat)
    while results and at > 0 and chat[at - 1]["role"] == "user":
        at -= 1
    chat[at:at] = sorted(results, key=lambda result: order.get(result["tool_call_id"], 0))
    if not texts:
        return
    text = TEXT_PART_SEPARATOR.join(texts)
    if chat and chat[-1]["role"] == "user":
        chat[-1]["content"] = _join(chat[-1]["content"], text)
    else:
        chat.append({"role": "user", "content": text})


def _prefill(messages: list[dict[str, Any]]) -> str:
    """A last assistant turn of text only: the answer continues it."""
    last = messages[-1]
    if len(messages) > 1 and last["role"] == "assistant" and not last.get("tool_calls"):
        messages.pop()
        return last["content"]
    return ""


def _join(first: str, second: str) -> str:
    return f"{first}{TEXT_PART_SEPARATOR}{second}" if first and second else first or second


# --- text ---


def text_of(content: Any, where: str, param: str) -> str:
    """A string, or the text of an array of text blocks (``cache_control`` ignored)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_request(f"'{where}' must be a string or an array of text blocks",
                              param=param)
    texts = []
    for index, block in enumerate(content):
        at = f"{where}[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text":
            raise _unreadable(kind, at) if isinstance(kind, str) else invalid_request(
                f"'{at}' must be a content block with a 'type'", param=param)
        texts.append(_string(block, "text", at))
    return TEXT_PART_SEPARATOR.join(texts)


def _string(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise invalid_request(f"'{where}.{key}' must be a string", param="messages")
    return value


def _unreadable(kind: str, where: str) -> ApiError:
    return invalid_request(_UNREADABLE.format(kind=kind, where=where),
                           f"Unsupported content block '{kind}'", "messages")
