"""``POST /api/generate`` as Ollama serves it (shimmy's own port keeps shimmy's shape).

The prompt becomes tokens one of four ways:

* ``raw``: as written, control tokens included (Continue's autocomplete sends this);
* ``suffix``: fill-in-the-middle with the model's FIM tokens (``<pre>`` prompt ``<suf>``
  suffix ``<mid>``), as Ollama fills a template's ``.Suffix``;
* ``template`` (a Go template) or ``context`` (tokens of an earlier answer): rendered
  here, the context's text first;
* otherwise, a one-turn chat (``system``, then ``prompt`` as the user's turn) through the
  chat layer, which also splits a thinking model's thoughts into ``thinking``.

Answers stream as NDJSON by default; the last object has ``done_reason``, the measured
durations and, unless ``raw``, ``context``: the prompt's tokens and the answer's. An empty
prompt loads the model (``keep_alive`` 0: unloads it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from shimmy.api.ollama import fields, gotemplate
from shimmy.api.ollama.chat import chat_budget
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
from shimmy.chat import prompt as prompts
from shimmy.chat.events import TextDelta, ThinkingDelta
from shimmy.chat.request import ChatRequest
from shimmy.chat.run import start_chat
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.scheduler import Generation, GenerationError
from shimmy.errors import generation_failed
from shimmy.http.types import Request, Response, StreamResponse
from shimmy.logs import attach
from shimmy.security import check_capacity

Piece = tuple[str, str]  # (response text, thinking text)


@dataclass(slots=True)
class Job:
    """A generation under way, however its prompt was made."""

    generation: Generation
    pieces: Callable[[], AsyncIterator[Piece]]
    cancel: Callable[[], None]
    with_context: bool
    texts: list[str] = field(default_factory=list)


class OllamaGenerate:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def handle(self, request: Request) -> Response | StreamResponse:
        clock = Clock.start()
        body = fields.require_object(request.json())
        name = model_field(body)
        entry = resolve(self.state.registry, name)
        keep = fields.keep_alive(body)
        prompt = fields.string(body, "prompt")
        streamed = fields.stream(body)
        if not prompt:
            reason = await load_or_unload(self.state.pool, entry, keep)
            return Response.json({"model": name, "created_at": created_at(), "response": "",
                                  "done": True, "done_reason": reason})
        options = parse_options(body.get("options"))
        model = await self.state.pool.get(entry.name, keep)
        clock.model_ready()
        job = await start(model, name, body, prompt, options)
        if streamed:
            return ndjson_response(_stream(job, model, name, clock), job.cancel)
        return Response.json(await _whole(job, model, name, clock))


async def start(model: LoadedModel, name: str, body: dict[str, Any], prompt: str,
                options: Options) -> Job:
    raw = fields.flag(body, "raw")
    system, template = fields.string(body, "system"), fields.string(body, "template")
    suffix = fields.string(body, "suffix")
    context = _context(body.get("context"), model)
    fmt = fields.response_format(body)
    thinking, effort = fields.think(body)
    if raw:
        if template or system or context:
            raise bad_request("raw mode does not support template, system, or context")
        return _direct(model, model.tokenize(prompt, special=True), options, fmt, False)
    fields.check_thinking(model, name, thinking)
    if suffix:
        return _direct(model, _infill(model, name, prompt, suffix), options, fmt, True)
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": prompt}]
    if template:
        text = gotemplate.render(template, {"System": system, "Prompt": prompt,
                                            "Suffix": "", "Response": ""})
    elif context:
        request = ChatRequest(messages=messages, thinking=thinking, reasoning_effort=effort)
        text, _ = await asyncio.to_thread(prompts.render, model, request)
    else:
        chat = ChatRequest(messages=messages, sampling=options.sampling, stop=options.stop,
                           max_tokens=options.num_predict, response_format=fmt,
                           thinking=thinking, reasoning_effort=effort)
        chat.max_tokens = await chat_budget(model, chat, options)
        return _chat_job(await start_chat(model, chat))
    if context:
        text = model.model.detokenize(context, True) + text
    stops = model.chat_template.stop_strings()
    return _direct(model, model.tokenize(text, special=True), options, fmt, True, stops)


def _context(value: Any, model: LoadedModel) -> list[int]:
    if value is None:
        return []
    n_vocab = model.model.n_vocab
    if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < n_vocab for t in value):
        raise bad_request(f"context must be an array of token ids below {n_vocab}")
    return value


def _infill(model: LoadedModel, name: str, prompt: str, suffix: str) -> list[int]:
    """Ollama fills a template's ``.Suffix``; shimmy uses the model's FIM tokens."""
    fim = model.model.fim_tokens
    if fim is None:
        raise bad_request(f'"{name}" does not support insert')
    before = model.model.tokenize(prompt, False, False)
    after = model.model.tokenize(suffix, False, False)
    start = [model.model.bos_token] if model.model.adds_bos else []
    return [*start, fim[0], *before, fim[1], *after, fim[2]]


def _direct(model: LoadedModel, tokens: list[int], options: Options,
            fmt: dict[str, Any] | None, with_context: bool,
            template_stops: list[str] | None = None) -> Job:
    """Queue ``tokens`` on the engine itself."""
    check_capacity(model)
    sampling = options.sampling
    sampling.grammar = fields.grammar(fmt)
    budget = options.budget(model.n_ctx, len(tokens))
    generation = model.generate(tokens, budget, sampling,
                                options.stop + (template_stops or []))
    attach(model.name, generation)

    async def pieces() -> AsyncIterator[Piece]:
        try:
            async for text, _ in generation.pieces():
                if text:
                    yield text, ""
        except GenerationError as exc:
            raise generation_failed(str(exc)) from None

    return Job(generation, pieces, generation.cancel, with_context)


def _chat_job(run: Any) -> Job:
    async def pieces() -> AsyncIterator[Piece]:
        async for event in run.events():
            if isinstance(event, TextDelta) and event.text:
                yield event.text, ""
            elif isinstance(event, ThinkingDelta) and event.text:
                yield "", event.text

    return Job(run.generation, pieces, run.cancel, True)


def _final(job: Job, model: LoadedModel, name: str, clock: Clock,
           response: str = "", thinking: str = "") -> dict[str, Any]:
    generation = job.generation
    final: dict[str, Any] = {"model": name, "created_at": created_at(), "response": response}
    if thinking:
        final["thinking"] = thinking
    final.update(done=True, done_reason=done_reason(generation.finish_reason))
    if job.with_context:
        answer = model.model.tokenize("".join(job.texts), False, True)
        final["context"] = list(generation.prompt) + answer
    final.update(clock.metrics(generation))
    return final


async def _whole(job: Job, model: LoadedModel, name: str, clock: Clock) -> dict[str, Any]:
    thoughts: list[str] = []
    async for text, thinking in job.pieces():
        job.texts.append(text)
        thoughts.append(thinking)
    return _final(job, model, name, clock, "".join(job.texts), "".join(thoughts))


async def _stream(job: Job, model: LoadedModel, name: str,
                  clock: Clock) -> AsyncIterator[dict[str, Any]]:
    async for text, thinking in job.pieces():
        job.texts.append(text)
        piece = {"model": name, "created_at": created_at(), "response": text, "done": False}
        if thinking:
            piece["thinking"] = thinking
        yield piece
    yield _final(job, model, name, clock)
