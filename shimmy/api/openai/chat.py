"""``POST /v1/chat/completions``: the model's chat template, tools, JSON modes, streaming."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from shimmy.api import params
from shimmy.api.openai import common, tools
from shimmy.api.openai.errors import openai_error_body
from shimmy.api.state import AppState
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.scheduler import Generation, GenerationError
from shimmy.errors import generation_failed, invalid_request
from shimmy.http.sse import SSE_DONE, TEXT_SLOT, TextEvents, sse_data
from shimmy.http.types import Request, Response, StreamResponse
from shimmy.logs import attach
from shimmy.models.chat_template import ChatTemplateError, normalize_messages
from shimmy.security import check_capacity


@dataclass(slots=True)
class ChatJob:
    model: LoadedModel
    generation: Generation
    plan: tools.ToolPlan
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
        return await common.respond(job.generation, job.stream, lambda: _stream(job),
                                    lambda: _complete(job))

    async def start(self, body: dict[str, Any]) -> ChatJob:
        model = await self.state.pool.get(params.string(body, "model", "default"),
                                          params.keep_alive(body))
        check_capacity(model)
        if "messages" not in body:
            raise invalid_request("'messages' is required", param="messages")
        common.require_n_one(body)
        plan = tools.plan(body)
        stream = params.boolean(body, "stream", False)
        include_usage = common.stream_options(body, stream)
        logprobs = params.boolean(body, "logprobs", False)
        top = params.integer(body, "top_logprobs", 0, 0, 20)
        if top and not logprobs:
            raise invalid_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        prompt = render_prompt(model, body["messages"], plan.tools)
        sampling = common.sampling(body)
        sampling.grammar = _grammar(body, plan)
        limit = common.max_tokens(body, model, len(prompt),
                                  ("max_completion_tokens", "max_tokens"), None)
        stops = params.stop_strings(body) + model.chat_template.stop_strings()
        generation = model.generate(prompt, limit, sampling, stops,
                                    params.boolean(body, "ignore_eos", False),
                                    top if logprobs else -1)
        attach(model.name, generation)
        return ChatJob(model, generation, plan, stream, include_usage, logprobs)


def render_prompt(model: LoadedModel, messages: Any,
                  tool_list: list[dict[str, Any]] | None = None) -> list[int]:
    """Messages through the model's chat template, tokenized with its control tokens.

    A template that knows nothing of tools gets them described in the system message.
    """
    engine_model = model.model
    template = model.chat_template
    try:
        messages = normalize_messages(messages)
        if not template.supports_tools:
            messages = tools.without_tool_roles(messages)
            if tool_list:
                messages, tool_list = tools.describe_in_system(messages, tool_list), None
        text = template.render(
            messages,
            bos_token=engine_model.token_text(engine_model.bos_token),
            eos_token=engine_model.token_text(engine_model.eos_token),
            add_generation_prompt=True,
            tools=tool_list,
        )
    except ChatTemplateError as exc:
        raise invalid_request(str(exc), param="messages") from None
    return model.tokenize(text, special=True)


def _grammar(body: dict[str, Any], plan: tools.ToolPlan) -> str | None:
    from shimmy.api.json_grammar import SchemaError, tool_call_gbnf  # 20 ms: on first use

    if plan.forced is not None:
        name = None if plan.forced == "required" else plan.forced
        try:
            return tool_call_gbnf(plan.tools or [], name)
        except SchemaError as exc:
            raise invalid_request(f"a tool's parameters: {exc}", param="tools") from None
    return response_format_grammar(body.get("response_format"))


def response_format_grammar(fmt: Any) -> str | None:
    from shimmy.api.json_grammar import JSON_VALUE_GBNF, SchemaError, schema_to_gbnf

    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_VALUE_GBNF
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise invalid_request("'response_format.json_schema.schema' must be an object",
                                  param="response_format")
        try:
            return schema_to_gbnf(schema)
        except SchemaError as exc:
            raise invalid_request(str(exc), param="response_format") from None
    raise invalid_request("'response_format.type' must be 'text', 'json_object' or "
                          "'json_schema'", param="response_format")


async def _complete(job: ChatJob) -> dict[str, Any]:
    texts: list[str] = []
    logprobs: list = []
    try:
        async for text, entries in job.generation.pieces():
            texts.append(text)
            logprobs.extend(entries or ())
    except GenerationError as exc:
        raise generation_failed(str(exc)) from None
    text = "".join(texts)
    calls = _calls(job, text)
    message: dict[str, Any] = {"role": "assistant", "content": None if calls else text}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": job.id,
        "object": "chat.completion",
        "created": job.created,
        "model": job.model.name,
        "system_fingerprint": common.SYSTEM_FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": {"content": common.chat_logprobs(logprobs)} if job.logprobs else None,
            "finish_reason": "tool_calls" if calls else job.generation.finish_reason,
        }],
        "usage": common.usage(job.generation),
    }


def _calls(job: ChatJob, text: str) -> list[dict[str, Any]]:
    """The tool calls in a finished answer, if it is one."""
    if job.plan.forced is not None and job.generation.finish_reason == "stop":
        try:
            return [tools.forced_call(text)]
        except (json.JSONDecodeError, KeyError, TypeError):
            return []
    if job.plan.parse_calls:
        return tools.parse_calls(text, job.plan.tools or [])
    return []


class _Chunks:
    """Chunk objects of one stream: the same id, created and model on every one."""

    def __init__(self, job: ChatJob) -> None:
        self.job = job
        self.base = {"id": job.id, "object": "chat.completion.chunk", "created": job.created,
                     "model": job.model.name, "system_fingerprint": common.SYSTEM_FINGERPRINT}
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
        return sse_data({**self.base, "choices": [], "usage": common.usage(self.job.generation)})


async def _stream(job: ChatJob) -> AsyncIterator[bytes]:
    chunks = _Chunks(job)
    held: list[str] = []  # text that may still turn out to be a tool call
    holding = job.plan.forced is not None or job.plan.parse_calls
    try:
        yield chunks.delta({"role": "assistant", "content": ""})
        async for text, entries in job.generation.pieces():
            if holding:
                held.append(text)
                if job.plan.forced is None and not tools.may_be_call("".join(held)):
                    holding = False
                    text, held = "".join(held), []
                else:
                    continue
            if job.logprobs and (text or entries):
                yield chunks.delta({"content": text} if text else {}, logprobs=entries)
            elif text:
                yield chunks.content(text)
        text = "".join(held)
        calls = _calls(job, text)
        if calls:
            for index, call in enumerate(calls):
                yield chunks.delta({"tool_calls": [{
                    "index": index, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}]})
                yield chunks.delta({"tool_calls": [{
                    "index": index, "function": {"arguments": call["function"]["arguments"]}}]})
        elif text:
            yield chunks.delta({"content": text})
        yield chunks.delta({}, "tool_calls" if calls else job.generation.finish_reason)
        if job.include_usage:
            yield chunks.usage()
    except GenerationError as exc:
        yield sse_data(openai_error_body(generation_failed(str(exc))))
    yield SSE_DONE
