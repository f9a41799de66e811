"""``POST /api/chat`` as Ollama serves it, translated to and from shimmy's chat layer.

In: Ollama's messages (``tool_calls`` with arguments as objects, ``tool`` turns named by
``tool_name``, an assistant's ``thinking``), ``tools``, ``format``, ``options``, ``think``.
Out: one object, or (the default) NDJSON pieces whose ``message`` carries ``content``,
``thinking`` or ``tool_calls``, then a last object with ``done: true``, ``done_reason``
and measured durations. No messages: load the model (``keep_alive`` 0: unload it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from shimmy.api.ollama import fields
from shimmy.api.ollama.common import (
    Clock,
    bad_request,
    created_at,
    done_reason,
    load_or_unload,
    model_field,
    resolve,
)
from shimmy.api.ollama.ndjson import ndjson_response
from shimmy.api.ollama.options import Options, parse_options
from shimmy.api.state import AppState
from shimmy.chat.events import Finish, TextDelta, ThinkingDelta, ToolCallEnd, ToolCallStart
from shimmy.chat.request import ChatRequest
from shimmy.chat.run import ChatRun, count_tokens, start_chat
from shimmy.engine.loaded import LoadedModel
from shimmy.http.types import Request, Response, StreamResponse


class OllamaChat:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def handle(self, request: Request) -> Response | StreamResponse:
        clock = Clock.start()
        body = fields.require_object(request.json())
        name = model_field(body)
        entry = resolve(self.state.registry, name)
        keep = fields.keep_alive(body)
        messages = body.get("messages")
        streamed = fields.stream(body)
        if messages is None or messages == []:
            reason = await load_or_unload(self.state.pool, entry, keep)
            return Response.json({"model": name, "created_at": created_at(),
                                  "message": {"role": "assistant", "content": ""},
                                  "done_reason": reason, "done": True})
        options = parse_options(body.get("options"))
        chat = chat_request(body, options)
        model = await self.state.pool.get(entry.name, keep)
        clock.model_ready()
        fields.check_thinking(model, name, chat.thinking)
        chat.max_tokens = await chat_budget(model, chat, options)
        run = await start_chat(model, chat)
        if streamed:
            return ndjson_response(_stream(run, name, clock), run.cancel)
        return Response.json(await _whole(run, name, clock))


def chat_request(body: dict[str, Any], options: Options) -> ChatRequest:
    """Ollama's chat fields as the protocol-neutral request."""
    thinking, effort = fields.think(body)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("tools must be an array")
    return ChatRequest(
        messages=translate_messages(body["messages"]),
        tools=tools or None,
        sampling=options.sampling,
        response_format=fields.response_format(body),
        thinking=thinking,
        reasoning_effort=effort,
        stop=options.stop,
        max_tokens=options.num_predict,
    )


def translate_messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama messages as the OpenAI-style messages the chat layer takes: tool calls get
    ids, and each tool turn the id of the call it answers (by ``tool_name``)."""
    if not isinstance(messages, list):
        raise bad_request("messages must be an array")
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, name) of the last assistant's calls
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object")
        fields.no_images(message.get("images"), where)
        converted = {key: value for key, value in message.items()
                     if key in ("role", "content", "name")}
        if converted.get("content") is None:
            converted["content"] = ""
        role = message.get("role")
        if role == "assistant":
            if isinstance(message.get("thinking"), str) and message["thinking"]:
                converted["reasoning_content"] = message["thinking"]
            calls = _calls(message.get("tool_calls"), index)
            if calls:
                converted["tool_calls"] = calls
                unanswered = [(call["id"], call["function"]["name"]) for call in calls]
        elif role == "tool":
            converted["tool_call_id"] = _answered(message, unanswered, index)
            if isinstance(message.get("tool_name"), str):
                converted["name"] = message["tool_name"]
        out.append(converted)
    return out


def _calls(value: Any, index: int) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(f"messages[{index}].tool_calls must be an array")
    calls = []
    for number, call in enumerate(value):
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise bad_request(f"messages[{index}].tool_calls[{number}] must be an object "
                              "with a 'function'")
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") \
            else f"call_{index}_{number}"
        function = call["function"]
        arguments = function.get("arguments")
        calls.append({"id": call_id, "type": "function", "function": {
            "name": function.get("name"), "arguments": {} if arguments is None else arguments}})
    return calls


def _answered(message: dict[str, Any], unanswered: list[tuple[str, str]], index: int) -> str:
    """The id of the call a tool turn answers: its own ``tool_call_id``, else the first
    unanswered call of its ``tool_name``, else the first unanswered call."""
    given = message.get("tool_call_id")
    if isinstance(given, str) and given:
        return given
    name = message.get("tool_name")
    for position, (call_id, call_name) in enumerate(unanswered):
        if name is None or call_name == name:
            del unanswered[position]
            return call_id
    return f"call_tool_{index}"


async def chat_budget(model: LoadedModel, chat: ChatRequest, options: Options) -> int | None:
    """``num_predict``, held within ``num_ctx`` when that is below the slot's context."""
    if options.num_ctx is None or options.num_ctx >= model.n_ctx:
        return chat.max_tokens
    return options.budget(model.n_ctx, await count_tokens(model, chat))


def ollama_call(call: dict[str, str], index: int) -> dict[str, Any]:
    """A finished tool call as Ollama writes it: arguments as an object."""
    try:
        arguments = json.loads(call["arguments"] or "{}")
    except ValueError:
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {}
    return {"id": call["id"],
            "function": {"index": index, "name": call["name"], "arguments": arguments}}


def _final(name: str, run: ChatRun, clock: Clock, finish: Finish | None,
           message: dict[str, Any]) -> dict[str, Any]:
    reason = finish.reason if finish is not None else run.generation.finish_reason
    return {"model": name, "created_at": created_at(), "message": message,
            "done_reason": done_reason(reason), "done": True,
            **clock.metrics(run.generation)}


async def _whole(run: ChatRun, name: str, clock: Clock) -> dict[str, Any]:
    result = await run.result()
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    if result.thinking:
        message["thinking"] = result.thinking
    if result.tool_calls:
        message["tool_calls"] = [ollama_call(call, index)
                                 for index, call in enumerate(result.tool_calls)]
    return _final(name, run, clock, result.finish, message)


async def _stream(run: ChatRun, name: str, clock: Clock) -> AsyncIterator[dict[str, Any]]:
    started: dict[int, dict[str, str]] = {}

    def piece(message: dict[str, Any]) -> dict[str, Any]:
        return {"model": name, "created_at": created_at(),
                "message": {"role": "assistant", "content": "", **message}, "done": False}

    async for event in run.events():
        if isinstance(event, TextDelta) and event.text:
            yield piece({"content": event.text})
        elif isinstance(event, ThinkingDelta) and event.text:
            yield piece({"thinking": event.text})
        elif isinstance(event, ToolCallStart):
            started[event.index] = {"id": event.id, "name": event.name}
        elif isinstance(event, ToolCallEnd):
            call = {**started[event.index], "arguments": event.arguments}
            yield piece({"tool_calls": [ollama_call(call, event.index)]})
        elif isinstance(event, Finish):
            yield _final(name, run, clock, event, {"role": "assistant", "content": ""})
