"""``POST /v1/responses`` and ``/v1/responses/input_tokens``: OpenAI's Responses API in
and out of the chat layer, stateless (as llama-server's and Ollama's are).

The whole conversation comes in ``input`` on every request: ``message`` items,
``function_call`` / ``function_call_output`` pairs and ``reasoning`` items become chat
messages. Nothing is stored, so ``previous_response_id`` and ``conversation`` are refused
with a 400 that says so. Tools other than ``function`` (``web_search``, ``namespace``, ...)
are left out, logged once per type. The output side is ``responses_stream``.
"""

from __future__ import annotations

import logging
from typing import Any

from shimmy.api import params
from shimmy.api.openai import common
from shimmy.api.openai.responses_stream import ResponseJob, complete, stream
from shimmy.api.state import AppState
from shimmy.chat.request import ChatRequest
from shimmy.chat.run import count_tokens, start_chat
from shimmy.errors import invalid_request
from shimmy.http.router import Router
from shimmy.http.types import Request, Response, StreamResponse

log = logging.getLogger("shimmy.api")

TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
MEDIA_PARTS = ("input_image", "input_file", "input_audio")
ROLES = ("user", "assistant", "system", "developer")
EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
           "xhigh": "high"}
LOGPROBS_INCLUDE = "message.output_text.logprobs"
_skipped_tool_types: set[str] = set()  # logged once each per process


def register(router: Router, state: AppState) -> None:
    responses = Responses(state)
    router.add("POST", "/v1/responses", responses.create)
    router.add("POST", "/v1/responses/input_tokens", responses.input_tokens)


class Responses:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def create(self, request: Request) -> Response | StreamResponse:
        body = params.require_object(request.json())
        model = await self.state.pool.get(params.string(body, "model", "default"),
                                          params.keep_alive(body))
        stream_it = params.boolean(body, "stream", False)
        chat, echo = responses_request(body)
        run = await start_chat(model, chat)
        job = ResponseJob(run, echo, logprobs=chat.logprobs >= 0)
        if stream_it:
            return stream(job)
        return Response.json(await complete(job))

    async def input_tokens(self, request: Request) -> Response:
        """The prompt's size in tokens, template and tools included, as llama-server and
        OpenAI answer it."""
        body = params.require_object(request.json())
        model = await self.state.pool.get(params.string(body, "model", "default"),
                                          params.keep_alive(body))
        chat, _ = responses_request(body)
        tokens = await count_tokens(model, chat)
        return Response.json({"object": "response.input_tokens", "input_tokens": tokens})


def responses_request(body: dict[str, Any]) -> tuple[ChatRequest, dict[str, Any]]:
    """The chat layer's request for a Responses body, and the fields the response
    repeats back (``ResponseJob.echo``)."""
    _refuse_state(body)
    instructions = _optional_string(body, "instructions")
    tools = function_tools(body.get("tools"))
    choice, tools = tool_choice(body.get("tool_choice"), tools)
    fmt, text_echo = text_format(body.get("text"))
    thinking, effort, reasoning_echo = reasoning(body.get("reasoning"))
    top = params.integer(body, "top_logprobs", 0, 0, 20)
    include = _include(body)
    sampling = common.sampling(body)
    max_output = (params.integer(body, "max_output_tokens", 0, 1, 10_000_000)
                  if body.get("max_output_tokens") is not None else None)
    chat = ChatRequest(
        messages=input_messages(body.get("input"), instructions),
        tools=[_chat_tool(tool) for tool in tools] or None,
        tool_choice=choice,
        parallel_tool_calls=params.boolean(body, "parallel_tool_calls", True),
        max_tokens=max_output,
        sampling=sampling,
        response_format=fmt,
        thinking=thinking,
        reasoning_effort=effort,
        logprobs=top if LOGPROBS_INCLUDE in include else -1,
        stop=params.stop_strings(body),  # extensions, as on /v1/chat/completions
        ignore_eos=params.boolean(body, "ignore_eos", False),
        session=_optional_string(body, "prompt_cache_key"),
    )
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_output,
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        "parallel_tool_calls": chat.parallel_tool_calls,
        "previous_response_id": None,
        "prompt_cache_key": chat.session,
        "reasoning": reasoning_echo,
        "service_tier": "default",
        "store": False,  # accepted either way: nothing is ever kept
        "temperature": sampling.temperature,
        "text": text_echo,
        "tool_choice": _choice_echo(choice),
        "tools": tools,
        "top_logprobs": top,
        "top_p": sampling.top_p,
        "truncation": "disabled",
        "user": _optional_string(body, "user"),
    }
    return chat, echo


def _refuse_state(body: dict[str, Any]) -> None:
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise invalid_request(
                f"'{key}' is not supported: shimmy keeps no responses or conversations "
                "(it is stateless, as store: false is on OpenAI); send the whole "
                "conversation in 'input' instead", param=key)
    if body.get("background") is True:
        raise invalid_request("'background' responses need stored state, which shimmy does "
                              "not keep; leave 'background' out or false", param="background")
    if body.get("prompt") is not None:
        raise invalid_request("'prompt' (a stored prompt template) is not supported: "
                              "shimmy keeps no prompts; send 'instructions' and 'input'",
                              param="prompt")
    params.boolean(body, "store", False)  # accepted, true or false: shimmy stores nothing


def _optional_string(body: dict[str, Any], key: str) -> str | None:
    return params.string(body, key) if body.get(key) is not None else None


def _include(body: dict[str, Any]) -> list[str]:
    include = body.get("include")
    if include is None:
        return []
    if not isinstance(include, list) or not all(isinstance(x, str) for x in include):
        raise invalid_request("'include' must be an array of strings", param="include")
    return include


# --- tools -------------------------------------------------------------------------

def function_tools(tools: Any) -> list[dict[str, Any]]:
    """The request's ``function`` tools, checked, in Responses' flat shape; other tool
    types are left out (and logged once per type)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid_request("'tools' must be an array", param="tools")
    kept = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise invalid_request(f"tools[{index}] must be an object with a 'type'",
                                  param="tools")
        if tool["type"] == "function":
            kept.append(_function_tool(tool, f"tools[{index}]"))
        elif tool["type"] not in _skipped_tool_types:
            _skipped_tool_types.add(tool["type"])
            log.warning("Responses API: tools of type '%s' are left out: shimmy runs only "
                        "'function' tools (logged once per type)", tool["type"])
    return kept


def _function_tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_request(f"{where}.name must be a non-empty string", param="tools")
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise invalid_request(f"{where}.parameters must be a JSON schema object",
                              param="tools")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid_request(f"{where}.description must be a string", param="tools")
    return {"type": "function", "name": name, "description": description,
            "parameters": parameters, "strict": tool.get("strict") is True}


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {"name": tool["name"]}
    if tool["description"] is not None:
        function["description"] = tool["description"]
    if tool["parameters"] is not None:
        function["parameters"] = tool["parameters"]
    return {"type": "function", "function": function}


def tool_choice(choice: Any, tools: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Responses' ``tool_choice`` as the chat layer's (auto, none, required or a name), and
    the tools left on offer (``allowed_tools`` narrows them)."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice or "auto", tools
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function" and isinstance(choice.get("name"), str):
        return choice["name"], tools
    if kind == "allowed_tools":
        return _allowed_tools(choice, tools)
    raise invalid_request(
        "'tool_choice' must be 'none', 'auto', 'required', {'type': 'function', 'name': "
        "...} or {'type': 'allowed_tools', ...}; shimmy runs only function tools",
        param="tool_choice")


def _allowed_tools(choice: dict[str, Any],
                   tools: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    mode, allowed = choice.get("mode", "auto"), choice.get("tools")
    if mode not in ("auto", "required") or not isinstance(allowed, list):
        raise invalid_request("'tool_choice' of type 'allowed_tools' needs 'mode' ('auto' "
                              "or 'required') and a 'tools' array", param="tool_choice")
    names = {t.get("name") for t in allowed if isinstance(t, dict)
             and t.get("type") == "function"}
    return mode, [tool for tool in tools if tool["name"] in names]


def _choice_echo(choice: str) -> str | dict[str, str]:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "name": choice}


# --- text format and reasoning -------------------------------------------------------

def text_format(text: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``text.format`` as the chat layer's format, and the ``text`` the response repeats."""
    if text is None:
        return None, {"format": {"type": "text"}}
    if not isinstance(text, dict):
        raise invalid_request("'text' must be an object", param="text")
    fmt = text.get("format")
    echo = {"format": fmt if isinstance(fmt, dict) else {"type": "text"}}
    if isinstance(text.get("verbosity"), str):
        echo["verbosity"] = text["verbosity"]
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None, echo
    if kind == "json_object":
        return {"type": "json_object"}, echo
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise invalid_request("'text.format.schema' must be a JSON schema object",
                                  param="text.format")
        return {"type": "json_schema", "schema": fmt["schema"]}, echo
    raise invalid_request("'text.format.type' must be 'text', 'json_object' or "
                          "'json_schema'", param="text.format")


def reasoning(value: Any) -> tuple[bool | None, str | None, dict[str, Any]]:
    """``reasoning.effort`` as the chat layer's thinking switch and effort, where the
    template takes them; ``summary`` is accepted (the reasoning text comes out whole)."""
    if value is None:
        return None, None, {"effort": None, "summary": None}
    if not isinstance(value, dict):
        raise invalid_request("'reasoning' must be an object", param="reasoning")
    effort = value.get("effort")
    echo = {"effort": effort, "summary": value.get("summary")}
    if effort is None:
        return None, None, echo
    if effort == "none":
        return False, None, echo
    if effort not in EFFORTS:
        raise invalid_request("'reasoning.effort' must be 'none', 'minimal', 'low', "
                              "'medium', 'high' or 'xhigh'", param="reasoning.effort")
    return None, EFFORTS[effort], echo


# --- input items ---------------------------------------------------------------------

def input_messages(value: Any, instructions: str | None) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages. The system and developer messages
    that open the input join the instructions in one system message (many templates
    take a single one, first)."""
    if isinstance(value, str):
        items: list[Any] = [{"type": "message", "role": "user", "content": value}]
    elif isinstance(value, list):
        items = value
    else:
        raise invalid_request("'input' must be a string or an array of items", param="input")
    if not items:
        raise invalid_request("'input' must not be empty", param="input")
    builder = _Conversation()
    for index, item in enumerate(items):
        builder.add(item, f"input[{index}]")
    system = ([instructions] if instructions else []) + builder.system
    if system:
        return [{"role": "system", "content": "\n\n".join(system)}, *builder.messages]
    return builder.messages


class _Conversation:
    """Input items folded into chat messages, one at a time."""

    def __init__(self) -> None:
        self.system: list[str] = []  # the opening system/developer texts
        self.messages: list[dict[str, Any]] = []
        self._calls: set[str] = set()  # call ids of the function calls seen so far
        self._reasoning: str | None = None  # for the next assistant turn
        self._turn_open = False  # whether a function call joins the last assistant message

    def add(self, item: Any, where: str) -> None:
        if not isinstance(item, dict):
            raise invalid_request(f"{where} must be an object", param="input")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            self._message(item, where)
        elif kind == "function_call":
            self._function_call(item, where)
        elif kind == "function_call_output":
            self._function_output(item, where)
        elif kind == "reasoning":
            self._reasoning = _reasoning_text(item, where) or None
        elif kind == "item_reference":
            raise invalid_request(f"{where} is an 'item_reference': shimmy keeps no items; "
                                  "send the item itself", param="input")
        else:
            raise invalid_request(
                f"{where}.type {kind!r} is not supported: shimmy takes 'message', "
                "'function_call', 'function_call_output' and 'reasoning' items",
                param="input")

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if role not in ROLES:
            raise invalid_request(f"{where}.role must be one of {', '.join(ROLES)} "
                                  f"(got {role!r})", param="input")
        text = _content_text(item.get("content"), f"{where}.content")
        if role in ("system", "developer") and not self.messages:
            self.system.append(text)
            return
        message: dict[str, Any] = {"role": role, "content": text}
        if role == "assistant":
            self._attach_reasoning(message)
        self.messages.append(message)
        self._turn_open = role == "assistant"

    def _function_call(self, item: dict[str, Any], where: str) -> None:
        call_id = _field(item, "call_id", where)
        name = _field(item, "name", where)
        arguments = _field(item, "arguments", where, allow_empty=True)
        call = {"id": call_id, "type": "function",
                "function": {"name": name, "arguments": arguments or "{}"}}
        self._calls.add(call_id)
        if self._turn_open:
            self.messages[-1].setdefault("tool_calls", []).append(call)
            return
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
        self._attach_reasoning(message)
        self.messages.append(message)
        self._turn_open = True

    def _function_output(self, item: dict[str, Any], where: str) -> None:
        call_id = _field(item, "call_id", where)
        if call_id not in self._calls:
            raise invalid_request(
                f"{where} answers call_id {call_id!r}, but no function_call with that "
                "call_id comes before it in 'input' (shimmy is stateless: send the "
                "function_call item too)", param="input")
        output = item.get("output")
        text = output if isinstance(output, str) else _content_text(output, f"{where}.output")
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        self._turn_open = False

    def _attach_reasoning(self, message: dict[str, Any]) -> None:
        if self._reasoning:
            message["reasoning_content"] = self._reasoning
        self._reasoning = None


def _field(item: dict[str, Any], key: str, where: str, allow_empty: bool = False) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not (value or allow_empty):
        raise invalid_request(f"{where}.{key} must be a non-empty string", param="input")
    return value


def _content_text(content: Any, where: str) -> str:
    """A message's content (a string or text parts) as one text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_request(f"{where} must be a string or an array of content parts",
                              param="input")
    return "\n".join(_part_text(part, f"{where}[{i}]") for i, part in enumerate(content))


def _part_text(part: Any, where: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in MEDIA_PARTS:
        raise invalid_request(f"this model reads text only: {where} is an {kind!r} part; "
                              "send text parts only", param="input")
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return part["refusal"]
    if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
        raise invalid_request(f"{where} must be a text part: {{'type': 'input_text', "
                              "'text': ...}", param="input")
    return part["text"]


def _reasoning_text(item: dict[str, Any], where: str) -> str:
    """A reasoning item's text: its content, else its summary (encrypted content, which
    only OpenAI can read, is dropped)."""
    for key in ("content", "summary"):
        parts = item.get(key)
        if parts:
            return _content_text(parts, f"{where}.{key}")
    return ""
