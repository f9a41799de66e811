"""The chat layer's events as Anthropic content blocks, streamed or whole.

Text, thinking and each tool call are blocks of their own: a block opens when the kind of
output changes and closes before the next opens. Streamed, that is Anthropic's sequence:
``message_start`` (with the prompt's usage), ``ping``, per block ``content_block_start``,
its deltas (``text_delta``, ``thinking_delta`` then ``signature_delta``,
``input_json_delta`` pieces that concatenate to the tool input) and
``content_block_stop``; then ``message_delta`` (stop reason, final usage) and
``message_stop``. While a long prompt is read, a ``ping`` goes out every 10 s.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from shimmy.api.anthropic.errors import anthropic_error_body
from shimmy.api.streams import CancellingStream, with_pings
from shimmy.chat.events import (
    Event,
    Finish,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from shimmy.chat.run import ChatRun
from shimmy.errors import ApiError
from shimmy.http.sse import sse_data
from shimmy.http.types import Response, StreamResponse

log = logging.getLogger("shimmy.api")

StreamEvent = tuple[str, dict[str, Any]]  # (event name, payload without its "type")
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def tool_use_id(call_id: str) -> str:
    """The chat layer's ``call_…`` id as Anthropic's ``toolu_…``."""
    return "toolu_" + call_id.removeprefix("call_")


@dataclass(slots=True)
class MessageJob:
    run: ChatRun
    stream: bool
    id: str = field(default_factory=new_message_id)


class ContentBlocks:
    """The answer's content blocks, built from events; ``feed`` also says what to stream."""

    def __init__(self) -> None:
        self.content: list[dict[str, Any]] = []
        self._open: str | None = None  # the kind of the last block while it is open
        self._arguments = ""  # the tool input text streamed so far

    def feed(self, event: Event) -> list[StreamEvent]:
        if isinstance(event, TextDelta):
            return self._text("text", "text_delta", event.text) if event.text else []
        if isinstance(event, ThinkingDelta):
            return self._text("thinking", "thinking_delta", event.text) if event.text else []
        if isinstance(event, ToolCallStart):
            block = {"type": "tool_use", "id": tool_use_id(event.id), "name": event.name,
                     "input": {}}
            self._arguments = ""
            return [*self.close(), *self._start(block)]
        if isinstance(event, ToolCallDelta):
            return self._input_json(event.arguments)
        if isinstance(event, ToolCallEnd):
            return self._end_tool(event.arguments)
        if isinstance(event, Finish):
            return self.close() if self.content else [*self._start(_text_block()),
                                                      *self.close()]
        return []

    def close(self) -> list[StreamEvent]:
        """Close the open block, if one is."""
        if self._open is None:
            return []
        events: list[StreamEvent] = []
        if self._open == "thinking":  # Anthropic signs thoughts; a local model cannot
            events.append(self._delta({"type": "signature_delta", "signature": ""}))
        self._open = None
        events.append(("content_block_stop", {"index": len(self.content) - 1}))
        return events

    def _start(self, block: dict[str, Any]) -> list[StreamEvent]:
        self.content.append(block)
        self._open = block["type"]
        return [("content_block_start", {"index": len(self.content) - 1,
                                         "content_block": dict(block)})]

    def _delta(self, delta: dict[str, Any]) -> StreamEvent:
        return ("content_block_delta", {"index": len(self.content) - 1, "delta": delta})

    def _text(self, kind: str, delta_type: str, text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self._open != kind:
            block = _text_block() if kind == "text" else _thinking_block()
            events += [*self.close(), *self._start(block)]
        self.content[-1][kind] += text
        events.append(self._delta({"type": delta_type, kind: text}))
        return events

    def _input_json(self, piece: str) -> list[StreamEvent]:
        if not piece or self._open != "tool_use":
            return []
        self._arguments += piece
        return [self._delta({"type": "input_json_delta", "partial_json": piece})]

    def _end_tool(self, arguments: str) -> list[StreamEvent]:
        """The last of the input (when the pieces fell short of it), then the stop."""
        events: list[StreamEvent] = []
        if arguments.startswith(self._arguments):
            events += self._input_json(arguments[len(self._arguments):])
        else:
            log.warning("a tool call's streamed input differs from its whole input")
        self.content[-1]["input"] = tool_input(arguments)
        return [*events, *self.close()]


def _text_block() -> dict[str, Any]:
    return {"type": "text", "text": ""}


def _thinking_block() -> dict[str, Any]:
    return {"type": "thinking", "thinking": "", "signature": ""}


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments text as the ``input`` object (``{}`` when there is none)."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        log.warning("a tool call's arguments are not JSON: %.200s", arguments)
        return {}
    return value if isinstance(value, dict) else {}


def stop_reason(finish: Finish) -> tuple[str, str | None]:
    """``stop_reason`` and ``stop_sequence``; a template's end-of-turn marker is end_turn."""
    if finish.reason in _STOP_REASONS:
        return _STOP_REASONS[finish.reason], None
    if finish.stop_sequence is not None:
        return "stop_sequence", finish.stop_sequence
    return "end_turn", None


def usage(usage: Usage) -> dict[str, int]:
    """Anthropic's meaning: ``input_tokens`` were read, ``cache_read_input_tokens`` reused
    from a slot's cells; together they are the whole prompt."""
    return {"input_tokens": usage.prompt_tokens - usage.cached_tokens,
            "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage.cached_tokens}


def message(job: MessageJob, content: list[dict[str, Any]],
            finish: Finish | None) -> dict[str, Any]:
    """The message object: whole, or (no finish yet) as ``message_start`` carries it."""
    reason, sequence = stop_reason(finish) if finish is not None else (None, None)
    generation = job.run.generation
    counts = finish.usage if finish is not None else Usage(
        generation.prompt_tokens, 0, generation.cached_tokens)
    return {"id": job.id, "type": "message", "role": "assistant", "model": job.run.model.name,
            "content": content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": usage(counts)}


async def whole(job: MessageJob) -> dict[str, Any]:
    blocks = ContentBlocks()
    finish = None
    async for event in job.run.events():
        blocks.feed(event)
        if isinstance(event, Finish):
            finish = event
    return message(job, blocks.content, finish)


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + sse_data({"type": name, **payload})


PING = sse_event("ping", {})


async def events(job: MessageJob) -> AsyncIterator[bytes]:
    """The streamed message; an error after the start arrives as ``event: error``."""
    yield sse_event("message_start", {"message": message(job, [], None)})
    yield PING
    blocks = ContentBlocks()
    try:
        async for event in job.run.events():
            for name, payload in blocks.feed(event):
                yield sse_event(name, payload)
            if isinstance(event, Finish):
                reason, sequence = stop_reason(event)
                yield sse_event("message_delta", {
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": usage(event.usage)})
    except ApiError as exc:
        yield sse_event("error", anthropic_error_body(exc))
        return
    yield sse_event("message_stop", {})


async def respond(job: MessageJob) -> Response | StreamResponse:
    """A streamed answer (cancelled when the client goes away) or a whole one."""
    if job.stream:
        chunks = with_pings(events(job), job.run.generation, lambda: PING)
        return StreamResponse(CancellingStream(chunks, job.run.cancel))
    return Response.json(await whole(job))
