"""Anthropic's Messages API: ``POST /v1/messages``, for the anthropic package and Claude clients.

Text only: image, document, tool_use and tool_result blocks, and ``tools``, are refused.
As in Anthropic's API, consecutive turns of one role are combined into one, and a last
assistant message is a prefill that the answer continues. Usage follows Anthropic's
meaning: ``input_tokens`` counts the prompt tokens read, ``cache_read_input_tokens`` those
reused from a slot's cache; together they are the whole prompt.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from shimmy.api import params
from shimmy.api.openai import common
from shimmy.api.openai.chat import render_prompt
from shimmy.api.state import AppState
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.scheduler import Generation, GenerationError
from shimmy.errors import ApiError, generation_failed, invalid_request
from shimmy.http.router import Router
from shimmy.http.sse import sse_data
from shimmy.http.types import Request, Response, StreamResponse
from shimmy.logs import attach
from shimmy.models.chat_template import TEXT_PART_SEPARATOR
from shimmy.security import check_capacity

ROLES = ("user", "assistant")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def register(router: Router, state: AppState) -> None:
    router.add("POST", "/v1/messages", Messages(state).handle)
    router.error_shape("/v1/messages", anthropic_error_body)


def anthropic_error_body(error: ApiError) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``; the anthropic package picks its
    exception class from the status, so the status matters as much as the body."""
    message = f"{error.message}: {error.details}" if error.details else error.message
    fallback = "api_error" if error.status >= 500 else "invalid_request_error"
    kind = _ERROR_TYPES.get(error.status, fallback)
    return {"type": "error", "error": {"type": kind, "message": message}}


@dataclass(slots=True)
class MessageJob:
    model: LoadedModel
    generation: Generation
    stop_sequences: list[str]  # the client's own, not the chat template's
    stream: bool
    id: str = field(default_factory=lambda: f"msg_{secrets.token_hex(12)}")


class Messages:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def handle(self, request: Request) -> Response | StreamResponse:
        job = await self.start(params.require_object(request.json()))
        return await common.respond(job.generation, job.stream, lambda: _stream(job),
                                    lambda: _complete(job))

    async def start(self, body: dict[str, Any]) -> MessageJob:
        if body.get("max_tokens") is None:
            raise invalid_request("'max_tokens' is required", param="max_tokens")
        max_tokens = params.integer(body, "max_tokens", 0, 1, 10_000_000)
        if body.get("tools"):
            raise invalid_request("shimmy's Messages API supports text only, not tools",
                                  param="tools")
        stream = params.boolean(body, "stream", False)
        model = await self.state.pool.get(params.string(body, "model", "default"))
        check_capacity(model)
        prompt = _prompt(model, body)
        params.number(body, "temperature", 1.0, 0.0, 1.0)  # Anthropic's range is narrower
        sampling = params.sampling(body, temperature=1.0, top_p=1.0)
        stop_sequences = params.stop_strings(body, "stop_sequences")
        stops = stop_sequences + model.chat_template.stop_strings()
        generation = model.generate(prompt, max_tokens, sampling, stops,
                                    params.boolean(body, "ignore_eos", False))
        attach(model.name, generation)
        return MessageJob(model, generation, stop_sequences, stream)


def _prompt(model: LoadedModel, body: dict[str, Any]) -> list[int]:
    """The chat-template prompt, followed by the prefill if the last turn is the assistant's."""
    messages = _messages(body.get("messages"))
    prefill = ""
    if len(messages) > 1 and messages[-1]["role"] == "assistant":
        prefill = messages.pop()["content"]
    system = _text(body["system"], "system", "system") if body.get("system") is not None else ""
    if system:
        messages.insert(0, {"role": "system", "content": system})
    tokens = render_prompt(model, messages)
    # the prefill continues the answer: no start token, no control tokens parsed
    return tokens + model.model.tokenize(prefill, False, False) if prefill else tokens


def _messages(value: Any) -> list[dict[str, str]]:
    """Anthropic messages as OpenAI-style ones, consecutive turns of a role combined."""
    if not isinstance(value, list) or not value:
        raise invalid_request("'messages' must be a non-empty array", param="messages")
    merged: list[dict[str, str]] = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid_request(f"'{where}' must be an object", param="messages")
        role = message.get("role")
        if role not in ROLES:
            raise invalid_request(f"'{where}.role' must be 'user' or 'assistant', not {role!r}",
                                  param="messages")
        if "content" not in message:
            raise invalid_request(f"'{where}.content' is required", param="messages")
        text = _text(message["content"], f"{where}.content", "messages")
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] += TEXT_PART_SEPARATOR + text
        else:
            merged.append({"role": role, "content": text})
    return merged


def _text(content: Any, where: str, param: str) -> str:
    """A string, or the text of an array of text blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_request(f"'{where}' must be a string or an array of content blocks",
                              param=param)
    texts = []
    for index, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text":
            raise invalid_request(f"'{where}[{index}]' is a {kind!r} block; shimmy supports "
                                  "only text blocks", "Only text content is supported", param)
        if not isinstance(block.get("text"), str):
            raise invalid_request(f"'{where}[{index}].text' must be a string", param=param)
        texts.append(block["text"])
    return TEXT_PART_SEPARATOR.join(texts)


def _stop(job: MessageJob) -> tuple[str | None, str | None]:
    """``stop_reason`` and ``stop_sequence``; a template's end-of-turn marker is end_turn."""
    generation = job.generation
    if generation.finish_reason is None:
        return None, None
    if generation.finish_reason == "length":
        return "max_tokens", None
    if generation.stop_string is not None and generation.stop_string in job.stop_sequences:
        return "stop_sequence", generation.stop_string
    return "end_turn", None


def _usage(generation: Generation) -> dict[str, int]:
    cached = generation.cached_tokens
    return {"input_tokens": generation.prompt_tokens - cached,
            "output_tokens": generation.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached}


def _message(job: MessageJob, content: list[dict[str, Any]]) -> dict[str, Any]:
    stop_reason, stop_sequence = _stop(job)
    return {"id": job.id, "type": "message", "role": "assistant", "model": job.model.name,
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": _usage(job.generation)}


async def _complete(job: MessageJob) -> dict[str, Any]:
    try:
        text = await job.generation.text()
    except GenerationError as exc:
        raise generation_failed(str(exc)) from None
    return _message(job, [{"type": "text", "text": text}])


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + sse_data({"type": name, **payload})


async def _stream(job: MessageJob) -> AsyncIterator[bytes]:
    generation = job.generation
    yield _event("message_start", {"message": _message(job, [])})
    yield _event("content_block_start",
                 {"index": 0, "content_block": {"type": "text", "text": ""}})
    yield _event("ping", {})
    try:
        async for text in generation:
            yield _event("content_block_delta",
                         {"index": 0, "delta": {"type": "text_delta", "text": text}})
    except GenerationError as exc:
        yield _event("error", anthropic_error_body(generation_failed(str(exc))))
        return
    yield _event("content_block_stop", {"index": 0})
    stop_reason, stop_sequence = _stop(job)
    yield _event("message_delta", {
        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
        "usage": _usage(generation),
    })
    yield _event("message_stop", {})
