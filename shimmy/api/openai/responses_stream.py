"""The Responses API's output: chat events as ``response`` objects and their stream.

One ``OutputWriter`` turns the chat layer's events into Responses stream events
(``response.output_item.added``, ``response.output_text.delta``, ...) and keeps the
output items they describe; a whole (non-streamed) response is the same writer's final
``response`` object, so both agree by construction. Thinking becomes a ``reasoning``
item, text a ``message`` item, each tool call a ``function_call`` item, in the order the
model writes them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from shimmy.api.openai import common
from shimmy.api.openai.errors import openai_error_body
from shimmy.api.streams import CancellingStream, with_pings
from shimmy.chat.events import (
    Event,
    Finish,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from shimmy.chat.run import ChatRun
from shimmy.errors import ApiError
from shimmy.http.types import StreamResponse


def new_id(prefix: str) -> str:
    """An id in OpenAI's Responses style: ``resp_…``, ``msg_…``, ``fc_…``, ``rs_…``."""
    return f"{prefix}_{secrets.token_hex(16)}"


@dataclass(slots=True)
class ResponseJob:
    run: ChatRun
    echo: dict[str, Any]  # request fields every response object repeats
    logprobs: bool = False
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=common.now)


@dataclass(slots=True)
class _OpenItem:
    """The output item being written."""

    kind: str  # "message", "reasoning" or "function_call"
    id: str
    index: int  # its output_index
    texts: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    call_id: str = ""
    name: str = ""


class OutputWriter:
    """Chat events in, Responses stream events (as dicts) out, numbered from 0."""

    def __init__(self, job: ResponseJob) -> None:
        self.job = job
        self.output: list[dict[str, Any]] = []  # finished items
        self._sequence = 0
        self._open: _OpenItem | None = None
        self._held: list[TextDelta] = []  # whitespace not yet known to start a message
        self._thinking: list[str] = []

    # --- whole responses -----------------------------------------------------------

    def response(self, status: str, usage: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None,
                 incomplete: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``response`` object with the items finished so far."""
        job = self.job
        return {
            "id": job.id, "object": "response", "created_at": job.created_at,
            "status": status, "background": False, "error": error,
            "incomplete_details": incomplete, "model": job.run.model.name,
            "output": list(self.output), **job.echo, "usage": usage,
            "completed_at": common.now() if status == "completed" else None,
        }

    def usage(self) -> dict[str, Any]:
        generation = self.job.run.generation
        prompt, completion = generation.prompt_tokens, generation.completion_tokens
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": generation.cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": self._reasoning_tokens()},
            "total_tokens": prompt + completion,
        }

    def _reasoning_tokens(self) -> int:
        if not self._thinking:
            return 0
        tokens = self.job.run.model.tokenize("".join(self._thinking))
        return min(len(tokens), self.job.run.generation.completion_tokens)

    # --- stream events -------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        number, self._sequence = self._sequence, self._sequence + 1
        return {"type": kind, "sequence_number": number, **fields}

    def start(self) -> list[dict[str, Any]]:
        return [self.event("response.created", response=self.response("in_progress")),
                self.keepalive()]

    def keepalive(self) -> dict[str, Any]:
        """``response.in_progress``: also sent while a long prompt is read, since Codex
        times out a stream that sends no event (SSE comments do not count)."""
        return self.event("response.in_progress", response=self.response("in_progress"))

    def feed(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, TextDelta):
            return self._text(event)
        if isinstance(event, ThinkingDelta):
            return self._think(event.text) if event.text else []
        if isinstance(event, ToolCallStart):
            return [*self._close(), *self._open_call(event)]
        if isinstance(event, ToolCallDelta):
            return self._call_delta(event.arguments)
        if isinstance(event, ToolCallEnd):
            return self._end_call(event.arguments)
        return self.finish(event)

    def finish(self, finish: Finish) -> list[dict[str, Any]]:
        events = []
        if not self.output and self._open is None:  # always answer with some item
            events += self._open_message()
            events += self._flush_held()
        cut = finish.reason == "length"
        events += self._close("incomplete" if cut else "completed")
        if cut:
            response = self.response("incomplete", self.usage(),
                                     incomplete={"reason": "max_output_tokens"})
        else:
            response = self.response("completed", self.usage())
        # a cut-off answer still ends with response.completed (its response's status says
        # "incomplete"): Codex ends a turn only on that event, and treats a stream without
        # it as broken and sends the whole request again
        return [*events, self.event("response.completed", response=response)]

    def fail(self, error: ApiError) -> list[dict[str, Any]]:
        """``response.failed``, with the error where the SDK and Codex read it."""
        code = error.code if error.status < 500 else "server_error"
        body = {"code": code, "message": openai_error_body(error)["error"]["message"]}
        return [self.event("response.failed", response=self.response("failed", error=body))]

    # --- items ---------------------------------------------------------------------

    def _text(self, delta: TextDelta) -> list[dict[str, Any]]:
        if not delta.text and not delta.logprobs:
            return []
        open_item = self._open
        if open_item is None or open_item.kind != "message":
            if not delta.text.strip():
                self._held.append(delta)
                return []
            events = [*self._close(), *self._open_message(), *self._flush_held()]
            return events + self._text_delta(delta)
        return self._text_delta(delta)

    def _flush_held(self) -> list[dict[str, Any]]:
        held, self._held = self._held, []
        return [event for delta in held for event in self._text_delta(delta)]

    def _text_delta(self, delta: TextDelta) -> list[dict[str, Any]]:
        item = self._open
        assert item is not None
        logprobs = common.chat_logprobs(delta.logprobs) if self.job.logprobs else []
        item.texts.append(delta.text)
        item.logprobs.extend(logprobs)
        if not delta.text and not logprobs:
            return []
        return [self.event("response.output_text.delta", item_id=item.id,
                           output_index=item.index, content_index=0, delta=delta.text,
                           logprobs=logprobs)]

    def _think(self, text: str) -> list[dict[str, Any]]:
        self._thinking.append(text)
        events = []
        if self._open is None or self._open.kind != "reasoning":
            self._held = []  # whitespace before thinking starts no message
            events += self._close()
            item = self._begin("reasoning", new_id("rs"))
            events.append(self.event("response.output_item.added", output_index=item.index,
                                     item=_reasoning_item(item.id, "", "in_progress")))
            events.append(self.event("response.content_part.added", item_id=item.id,
                                     output_index=item.index, content_index=0,
                                     part={"type": "reasoning_text", "text": ""}))
        item = self._open
        assert item is not None
        item.texts.append(text)
        return [*events, self.event("response.reasoning_text.delta", item_id=item.id,
                                    output_index=item.index, content_index=0, delta=text)]

    def _open_message(self) -> list[dict[str, Any]]:
        item = self._begin("message", new_id("msg"))
        return [
            self.event("response.output_item.added", output_index=item.index,
                       item=_message_item(item.id, None, "in_progress")),
            self.event("response.content_part.added", item_id=item.id,
                       output_index=item.index, content_index=0, part=_text_part("", [])),
        ]

    def _open_call(self, start: ToolCallStart) -> list[dict[str, Any]]:
        self._held = []  # whitespace before a call is no message
        item = self._begin("function_call", new_id("fc"))
        item.call_id, item.name = start.id, start.name
        return [self.event("response.output_item.added", output_index=item.index,
                           item=_call_item(item, "", "in_progress"))]

    def _call_delta(self, arguments: str) -> list[dict[str, Any]]:
        item = self._open
        if item is None or item.kind != "function_call" or not arguments:
            return []
        item.texts.append(arguments)
        return [self.event("response.function_call_arguments.delta", item_id=item.id,
                           output_index=item.index, delta=arguments)]

    def _end_call(self, arguments: str) -> list[dict[str, Any]]:
        item = self._open
        if item is None or item.kind != "function_call":
            return []
        item.texts = [arguments]
        return self._close()

    def _begin(self, kind: str, item_id: str) -> _OpenItem:
        self._open = _OpenItem(kind, item_id, len(self.output))
        return self._open

    def _close(self, status: str = "completed") -> list[dict[str, Any]]:
        """The done events of the open item, if any; the item joins ``output``."""
        item, self._open = self._open, None
        if item is None:
            return []
        text = "".join(item.texts)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            done = _call_item(item, text, status)
            events = [self.event("response.function_call_arguments.done", **where,
                                 name=item.name, arguments=text)]
        elif item.kind == "reasoning":
            done = _reasoning_item(item.id, text, status)
            events = [
                self.event("response.reasoning_text.done", **where, content_index=0,
                           text=text),
                self.event("response.content_part.done", **where, content_index=0,
                           part={"type": "reasoning_text", "text": text}),
            ]
        else:
            part = _text_part(text, item.logprobs)
            done = _message_item(item.id, part, status)
            events = [
                self.event("response.output_text.done", **where, content_index=0, text=text,
                           logprobs=item.logprobs),
                self.event("response.content_part.done", **where, content_index=0, part=part),
            ]
        self.output.append(done)
        return [*events, self.event("response.output_item.done", output_index=item.index,
                                    item=done)]


def _text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _message_item(item_id: str, part: dict[str, Any] | None, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [part] if part is not None else []}


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [],
            "content": content}


def _call_item(item: _OpenItem, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item.id, "type": "function_call", "status": status,
            "call_id": item.call_id, "name": item.name, "arguments": arguments}


# --- whole and streamed --------------------------------------------------------------

async def complete(job: ResponseJob) -> dict[str, Any]:
    """The finished ``response`` object (a failed generation raises ``ApiError``)."""
    writer = OutputWriter(job)
    final: dict[str, Any] = {}
    async for event in job.run.events():
        for produced in writer.feed(event):
            if produced["type"] in ("response.completed", "response.incomplete"):
                final = produced["response"]
    return final


def stream(job: ResponseJob) -> StreamResponse:
    """The SSE stream, started at once, with keep-alive events while the prompt is read;
    the generation is cancelled when the client goes away."""
    writer = OutputWriter(job)
    generation = job.run.generation
    chunks = with_pings(_events(job, writer), generation,
                             lambda: sse_event(writer.keepalive()))
    return StreamResponse(CancellingStream(chunks, generation.cancel))


def sse_event(event: dict[str, Any]) -> bytes:
    """One event as SSE: ``event: <type>`` and its JSON."""
    payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {payload}\n\n".encode()


def _chunk(events: list[dict[str, Any]]) -> bytes:
    return b"".join(sse_event(event) for event in events)


async def _events(job: ResponseJob, writer: OutputWriter) -> AsyncIterator[bytes]:
    # each chunk carries all the events one chat event makes: their sequence numbers
    # are taken together, so a keep-alive never lands between them
    yield _chunk(writer.start())
    try:
        async for event in job.run.events():
            chunk = _chunk(writer.feed(event))
            if chunk:
                yield chunk
    except ApiError as exc:
        yield _chunk(writer.fail(exc))
