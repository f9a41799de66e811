"""``POST /v1/chat/completions``: OpenAI's chat shape in and out of the chat layer.

Thinking comes out as ``reasoning_content`` (as llama-server and vLLM send it), tool calls
as ``tool_calls`` whose arguments stream in pieces as the model writes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from shimmy.api import params
from shimmy.api.openai import common
from shimmy.api.openai.errors import openai_error_body
from shimmy.api.state import AppState
from shimmy.chat.events import (
    Finish,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
)
from shimmy.chat.request import ChatRequest
from shimmy.chat.run import ChatRun, start_chat
from shimmy.errors import ApiError, invalid_request
from shimmy.http.sse import SSE_DONE, TEXT_SLOT, TextEvents, sse_data
from shimmy.http.types import Request, Response, StreamResponse


@dataclass(slots=True)
class ChatJob:
    run: ChatRun
    stream: bool
    include_usage: bool
    logprobs: bool
    id: str = field(default_factory=lambda: common.new_id("chatcmpl"))
    created: int = field(default_factory=common.now)


class ChatCompletions:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def handle(self, request: Request) -> Response | StreamResponse:
        job = await self.start(params.require_object(request.json()))
        return await common.respond(job.run.generation, job.stream, lambda: _stream(job),
                                    lambda: _complete(job))

    async def start(self, body: dict[str, Any]) -> ChatJob:
        model = await self.state.pool.get(params.string(body, "model", "default"),
                                          params.keep_alive(body))
        if "messages" not in body:
            raise invalid_request("'messages' is required", param="messages")
        common.require_n_one(body)
        stream = params.boolean(body, "stream", False)
        include_usage = common.stream_options(body, stream)
        logprobs = params.boolean(body, "logprobs", False)
        top = params.integer(body, "top_logprobs", 0, 0, 20)
        if top and not logprobs:
            raise invalid_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        request = chat_request(body)
        request.logprobs = top if logprobs else -1
        run = await start_chat(model, request)
        return ChatJob(run, stream, include_usage, logprobs)


def chat_request(body: dict[str, Any]) -> ChatRequest:
    """The chat layer's request for an OpenAI chat body (model and stream aside)."""
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise invalid_request("'chat_template_kwargs' must be an object",
                              param="chat_template_kwargs")
    thinking = kwargs.get("enable_thinking")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in ("minimal", "low", "medium", "high"):
        raise invalid_request("'reasoning_effort' must be 'low', 'medium' or 'high'",
                              param="reasoning_effort")
    return ChatRequest(
        messages=body["messages"],
        tools=body.get("tools") or None,
        tool_choice=tool_choice(body.get("tool_choice"), bool(body.get("tools"))),
        parallel_tool_calls=params.boolean(body, "parallel_tool_calls", True),
        max_tokens=_max_tokens(body),
        sampling=common.sampling(body),
        response_format=response_format(body.get("response_format")),
        thinking=thinking if isinstance(thinking, bool) else None,
        reasoning_effort=effort,
        template_kwargs={k: v for k, v in kwargs.items() if k != "enable_thinking"},
        stop=params.stop_strings(body),
        ignore_eos=params.boolean(body, "ignore_eos", False),
        session=body.get("prompt_cache_key") if isinstance(body.get("prompt_cache_key"),
                                                           str) else None,
    )


def _max_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        if body.get(key) is not None:
            return params.integer(body, key, 0, 1, 10_000_000)
    return None


def tool_choice(choice: Any, has_tools: bool) -> str:
    """OpenAI's ``tool_choice`` as the chat layer's: auto, none, required or a name."""
    if choice is None:
        return "auto"
    if choice in ("none", "auto", "required"):
        if choice == "required" and not has_tools:
            raise invalid_request("'tool_choice' needs 'tools'", param="tool_choice")
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
        if isinstance(name, str):
            if not has_tools:
                raise invalid_request("'tool_choice' needs 'tools'", param="tool_choice")
            return name
    raise invalid_request("'tool_choice' must be 'none', 'auto', 'required' or "
                          "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")


def response_format(fmt: Any) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as the chat layer's format (None for plain text)."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise invalid_request("'response_format.json_schema.schema' must be an object",
                                  param="response_format")
        return {"type": "json_schema", "schema": schema}
    raise invalid_request("'response_format.type' must be 'text', 'json_object' or "
                          "'json_schema'", param="response_format")


def _calls(calls: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"id": call["id"], "type": "function",
             "function": {"name": call["name"], "arguments": call["arguments"]}}
            for call in calls]


async def _complete(job: ChatJob) -> dict[str, Any]:
    result = await job.run.result()
    finish = result.finish
    message: dict[str, Any] = {"role": "assistant",
                               "content": None if result.tool_calls else result.text}
    if result.thinking:
        message["reasoning_content"] = result.thinking
    if result.tool_calls:
        message["tool_calls"] = _calls(result.tool_calls)
    return {
        "id": job.id,
        "object": "chat.completion",
        "created": job.created,
        "model": job.run.model.name,
        "system_fingerprint": common.SYSTEM_FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": ({"content": common.chat_logprobs(result.logprobs)}
                         if job.logprobs else None),
            "finish_reason": finish.reason,
        }],
        "usage": common.usage(job.run.generation),
    }


class _Chunks:
    """Chunk objects of one stream: the same id, created and model on every one."""

    def __init__(self, job: ChatJob) -> None:
        self.job = job
        self.base = {"id": job.id, "object": "chat.completion.chunk", "created": job.created,
                     "model": job.run.model.name,
                     "system_fingerprint": common.SYSTEM_FINGERPRINT}
        if job.include_usage:
            self.base["usage"] = None
        self._content = TextEvents({**self.base, "choices": [
            {"index": 0, "delta": {"content": TEXT_SLOT}, "logprobs": None,
             "finish_reason": None}]})

    def content(self, text: str) -> bytes:
        return self._content.event(text)

    def delta(self, delta: dict[str, Any], finish: str | None = None,
              logprobs: list | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if logprobs is not None:
            choice["logprobs"] = {"content": common.chat_logprobs(logprobs)}
        return sse_data({**self.base, "choices": [choice]})

    def usage(self) -> bytes:
        return sse_data({**self.base, "choices": [],
                         "usage": common.usage(self.job.run.generation)})


def _chunk(chunks: _Chunks, job: ChatJob, event: Any) -> bytes | None:
    if isinstance(event, TextDelta):
        if job.logprobs and (event.text or event.logprobs):
            return chunks.delta({"content": event.text} if event.text else {},
                                logprobs=event.logprobs or [])
        return chunks.content(event.text) if event.text else None
    if isinstance(event, ThinkingDelta):
        return chunks.delta({"reasoning_content": event.text}) if event.text else None
    if isinstance(event, ToolCallStart):
        return chunks.delta({"tool_calls": [{
            "index": event.index, "id": event.id, "type": "function",
            "function": {"name": event.name, "arguments": ""}}]})
    if isinstance(event, ToolCallDelta):
        return chunks.delta({"tool_calls": [{
            "index": event.index, "function": {"arguments": event.arguments}}]})
    if isinstance(event, Finish):
        return chunks.delta({}, event.reason)
    return None


async def _stream(job: ChatJob) -> AsyncIterator[bytes]:
    chunks = _Chunks(job)
    try:
        yield chunks.delta({"role": "assistant", "content": ""})
        async for event in job.run.events():
            chunk = _chunk(chunks, job, event)
            if chunk is not None:
                yield chunk
        if job.include_usage:
            yield chunks.usage()
    except ApiError as exc:
        yield sse_data(openai_error_body(exc))
    yield SSE_DONE
