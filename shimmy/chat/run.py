"""A chat request through the engine: prompt, constraints, generation, parsed events.

``start_chat`` renders and queues; ``ChatRun.events()`` streams what the model writes as
text, thinking and tool-call pieces (see ``shimmy.chat.events``), ending with ``Finish``;
``ChatRun.result()`` gathers the same into one ``ChatResult``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from shimmy.chat import prompt as prompts
from shimmy.chat.events import (
    Event,
    Finish,
    TextDelta,
    ThinkingDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from shimmy.chat.request import ChatRequest
from shimmy.chat.syntax import OutputParser, detect_syntax, needs_special_tokens, opens_thinking
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.scheduler import Generation, GenerationError
from shimmy.errors import ContextExceeded, generation_failed, invalid_request
from shimmy.logs import attach
from shimmy.security import check_capacity

log = logging.getLogger("shimmy.chat")


@dataclass(slots=True)
class ChatResult:
    text: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, str]] = field(default_factory=list)  # {"id", "name", "arguments"}
    logprobs: list = field(default_factory=list)
    finish: Finish | None = None


class ChatRun:
    """One chat request queued on a model."""

    def __init__(self, model: LoadedModel, request: ChatRequest, generation: Generation,
                 parser: OutputParser, budget_is_context: bool) -> None:
        self.model = model
        self.request = request
        self.generation = generation
        self._parser = parser
        self._budget_is_context = budget_is_context

    @property
    def prompt_tokens(self) -> int:
        return self.generation.prompt_tokens

    def cancel(self) -> None:
        self.generation.cancel()

    async def events(self) -> AsyncIterator[Event]:
        """Parsed pieces as they are generated, then ``Finish``; a failed decode raises
        ``ApiError`` (generation_failed)."""
        parser = self._parser
        pending: list = []  # log-probabilities not yet handed out with a text piece
        try:
            async for text, entries in self.generation.pieces():
                if entries:
                    pending.extend(entries)
                for event in parser.feed(text) if text else ():
                    if isinstance(event, TextDelta) and pending:
                        event, pending = TextDelta(event.text, pending), []
                    yield event
        except GenerationError as exc:
            raise generation_failed(str(exc)) from None
        for event in parser.finish():
            if isinstance(event, TextDelta) and pending:
                event, pending = TextDelta(event.text, pending), []
            yield event
        if pending:
            yield TextDelta("", pending)
        yield self._finish()

    async def result(self) -> ChatResult:
        result = ChatResult()
        texts: list[str] = []
        thoughts: list[str] = []
        async for event in self.events():
            _gather(event, result, texts, thoughts)
        result.text, result.thinking = "".join(texts), "".join(thoughts)
        return result

    def _finish(self) -> Finish:
        generation = self.generation
        reason = generation.finish_reason or "stop"
        if reason == "stop" and self._parser.calls:
            reason = "tool_calls"
        if generation.finish_reason == "length" and self._budget_is_context:
            log.warning("%s: a request was cut off by the context: %d prompt tokens + %d "
                        "generated fill the %d tokens of a slot; raise --ctx",
                        self.model.name, generation.prompt_tokens,
                        generation.completion_tokens, self.model.n_ctx)
        stop = generation.stop_string if generation.stop_string in self.request.stop else None
        usage = Usage(generation.prompt_tokens, generation.completion_tokens,
                      generation.cached_tokens)
        return Finish(reason, stop, usage)


def _gather(event: Event, result: ChatResult, texts: list[str], thoughts: list[str]) -> None:
    if isinstance(event, TextDelta):
        texts.append(event.text)
        result.logprobs.extend(event.logprobs or ())
    elif isinstance(event, ThinkingDelta):
        thoughts.append(event.text)
    elif isinstance(event, ToolCallStart):
        result.tool_calls.append({"id": event.id, "name": event.name, "arguments": ""})
    elif isinstance(event, ToolCallEnd):
        result.tool_calls[-1]["arguments"] = event.arguments
    elif isinstance(event, Finish):
        result.finish = event


async def start_chat(model: LoadedModel, request: ChatRequest) -> ChatRun:
    """Render the request off the event loop and queue it; bad input raises ApiError."""
    check_capacity(model)
    if request.tools:
        prompts.check_tools(request.tools)
    _check_tool_choice(request)
    grammar = _grammar(request)
    with model.preparing():
        text, tokens = await asyncio.to_thread(prompts.render, model, request)
    budget, budget_is_context = completion_budget(model, len(tokens), request.max_tokens)
    template = model.chat_template
    tools = prompts.offered_tools(request)
    syntax = detect_syntax(template.source) if template.supports_tools else "json"
    parser = OutputParser(
        syntax, [tool["function"]["name"] for tool in tools or ()],
        open_thinking=opens_thinking(template.source, text),
        forced=request.tool_choice not in ("auto", "none"),
        parallel=request.parallel_tool_calls,
        tool_schemas={tool["function"]["name"]: tool["function"].get("parameters") or {}
                      for tool in tools or ()})
    request.sampling.grammar = grammar
    stops = request.stop + template.stop_strings()
    generation = model.generate(tokens, budget, request.sampling, stops, request.ignore_eos,
                                request.logprobs, special=needs_special_tokens(syntax))
    attach(model.name, generation)
    return ChatRun(model, request, generation, parser, budget_is_context)


async def count_tokens(model: LoadedModel, request: ChatRequest) -> int:
    """How many tokens the request's prompt takes, template and tools included."""
    if request.tools:
        prompts.check_tools(request.tools)
    with model.preparing():
        _, tokens = await asyncio.to_thread(prompts.render, model, request)
    return len(tokens)


def completion_budget(model: LoadedModel, n_prompt: int,
                      wanted: int | None) -> tuple[int, bool]:
    """How many tokens may be generated, and whether the context (not the client) set
    that: a request for more than the context leaves is clamped, never refused."""
    room = model.n_ctx - n_prompt
    if room < 1:
        raise context_exceeded(model, n_prompt)
    if wanted is None or wanted >= room:
        return room, True
    return wanted, False


def context_exceeded(model: LoadedModel, n_prompt: int) -> ContextExceeded:
    """A prompt too long for a slot: the sizes, and the flag that makes room."""
    trained = model.model.n_ctx_train
    hint = f" (the model was trained for {trained})" if trained > model.n_ctx else ""
    return ContextExceeded(model.name, n_prompt, model.n_ctx,
                           f"Start shimmy serve with a larger --ctx{hint}, and fewer "
                           "--parallel slots to save memory")


def _check_tool_choice(request: ChatRequest) -> None:
    choice = request.tool_choice
    if choice in ("auto", "none"):
        return
    if not request.tools:
        raise invalid_request("a tool choice that forces a call needs 'tools'",
                              param="tool_choice")
    if choice != "required" and choice not in {t["function"]["name"] for t in request.tools}:
        raise invalid_request(f"the tool choice names '{choice}', which is not among the "
                              "tools", param="tool_choice")


def _grammar(request: ChatRequest) -> str | None:
    from shimmy.api.json_grammar import (  # 20 ms: on first use
        JSON_VALUE_GBNF,
        SchemaError,
        schema_to_gbnf,
        tool_call_gbnf,
    )

    if request.tool_choice not in ("auto", "none"):
        name = None if request.tool_choice == "required" else request.tool_choice
        try:
            return tool_call_gbnf(request.tools or [], name)
        except SchemaError as exc:
            raise invalid_request(f"a tool's parameters: {exc}", param="tools") from None
    fmt = request.response_format
    if fmt is None:
        return None
    if fmt.get("type") == "json_object":
        return JSON_VALUE_GBNF
    schema: Any = fmt.get("schema")
    if not isinstance(schema, dict):
        raise invalid_request("a JSON schema format needs the schema as an object",
                              param="response_format")
    try:
        return schema_to_gbnf(schema)
    except SchemaError as exc:
        raise invalid_request(str(exc), param="response_format") from None

