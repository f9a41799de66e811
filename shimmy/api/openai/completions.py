"""``POST /v1/completions``: prompts as text or tokens, suffix (infill), echo, logprobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from shimmy.api import params
from shimmy.api.openai import common
from shimmy.api.openai.errors import openai_error_body
from shimmy.api.state import AppState
from shimmy.api.streams import CancellingStream
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.scheduler import Generation, GenerationError
from shimmy.errors import generation_failed, invalid_request
from shimmy.http.sse import SSE_DONE, TEXT_SLOT, TextEvents, sse_data
from shimmy.http.types import Request, Response, StreamResponse
from shimmy.logs import attach
from shimmy.security import check_capacity

MAX_PROMPTS = 16


@dataclass(slots=True)
class Choice:
    index: int
    prompt_text: str
    generation: Generation


@dataclass(slots=True)
class CompletionJob:
    model: LoadedModel
    choices: list[Choice]
    echo: bool
    logprobs: int  # -1: none
    include_usage: bool
    id: str = field(default_factory=lambda: common.new_id("cmpl"))
    created: int = field(default_factory=common.now)

    def usage(self) -> dict[str, Any]:
        prompt = sum(c.generation.prompt_tokens for c in self.choices)
        completion = sum(c.generation.completion_tokens for c in self.choices)
        cached = sum(c.generation.cached_tokens for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}

    def cancel(self) -> None:
        for choice in self.choices:
            choice.generation.cancel()


class Completions:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def handle(self, request: Request) -> Response | StreamResponse:
        body = params.require_object(request.json())
        stream = params.boolean(body, "stream", False)
        job = await self.start(body, stream)
        if stream:
            return StreamResponse(CancellingStream(_stream(job), job.cancel))
        return Response.json(await _complete(job))

    async def start(self, body: dict[str, Any], stream: bool) -> CompletionJob:
        """Validate and tokenize every prompt (off the event loop), then queue them all
        together: a request is admitted whole, counting each prompt against --max-queue,
        or not at all."""
        model = await self.state.pool.get(params.string(body, "model", "default"),
                                          params.keep_alive(body))
        check_capacity(model)
        common.require_n_one(body)
        include_usage = common.stream_options(body, stream)
        logprobs = params.integer(body, "logprobs", -1, -1, 5) if body.get("logprobs") \
            is not None else -1
        echo = params.boolean(body, "echo", False)
        suffix = body.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise invalid_request("'suffix' must be a string", param="suffix")
        prompts = _prompts(body)
        with self.state.pool.hold(model):  # not unloaded while its prompts are tokenized
            tokenized = await asyncio.to_thread(_tokenize_all, model, prompts, suffix or None)
            choices = []
            for index, (tokens, text) in enumerate(tokenized):
                limit = common.max_tokens(body, model, len(tokens), ("max_tokens",), 16)
                generation = model.prepare(tokens, limit, common.sampling(body),
                                           params.stop_strings(body),
                                           params.boolean(body, "ignore_eos", False), logprobs)
                choices.append(Choice(index, text, generation))
            check_capacity(model, len(choices))  # again: others came in while it tokenized
            model.submit(*(choice.generation for choice in choices))
        for choice in choices:
            attach(model.name, choice.generation)
        return CompletionJob(model, choices, echo, logprobs, include_usage)


def _tokenize_all(model: LoadedModel, prompts: list[str | list[int]],
                  suffix: str | None) -> list[tuple[list[int], str]]:
    """Each prompt's tokens and its text (for echo); raises the first prompt's error."""
    return [(_tokens(model, prompt, suffix),
             prompt if isinstance(prompt, str) else model.model.detokenize(prompt))
            for prompt in prompts]


def _prompts(body: dict[str, Any]) -> list[str | list[int]]:
    prompt = body.get("prompt")
    if prompt is None:
        raise invalid_request("'prompt' is required", param="prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(_is_token(t) for t in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(
            isinstance(p, str) or (isinstance(p, list) and p and all(_is_token(t) for t in p))
            for p in prompt):
        if len(prompt) > MAX_PROMPTS:
            raise invalid_request(f"at most {MAX_PROMPTS} prompts per request", param="prompt")
        return prompt
    raise invalid_request("'prompt' must be a string, an array of strings, an array of token "
                          "ids or an array of such arrays", param="prompt")


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tokens(model: LoadedModel, prompt: str | list[int], suffix: str | None) -> list[int]:
    if suffix is None:
        if isinstance(prompt, list):
            n_vocab = model.model.n_vocab
            if any(t >= n_vocab for t in prompt):
                raise invalid_request(f"token ids must be below {n_vocab}", param="prompt")
            return prompt
        return model.tokenize(prompt)
    fim = model.model.fim_tokens
    if fim is None:
        raise invalid_request(f"Model '{model.name}' has no fill-in-the-middle tokens, so it "
                              "cannot complete with a suffix", param="suffix")
    if isinstance(prompt, list):
        raise invalid_request("'suffix' needs a text prompt", param="suffix")
    before = model.model.tokenize(prompt, False, False)
    after = model.model.tokenize(suffix, False, False)
    start = [model.model.bos_token] if model.model.adds_bos else []
    return [*start, fim[0], *before, fim[1], *after, fim[2]]


def _legacy_logprobs(entries: list, offset: int) -> dict[str, Any]:
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    for _, piece, logprob, top in entries:
        text = piece.decode("utf-8", "replace")
        offsets.append(offset)
        offset += len(text)
        tokens.append(text)
        token_logprobs.append(logprob)
        top_logprobs.append({p.decode("utf-8", "replace"): lp for _, p, lp in top})
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": offsets}


async def _complete(job: CompletionJob) -> dict[str, Any]:
    try:
        results = await asyncio.gather(*(_collect(job, c) for c in job.choices))
    except GenerationError as exc:
        job.cancel()
        raise generation_failed(str(exc)) from None
    return {"id": job.id, "object": "text_completion", "created": job.created,
            "model": job.model.name, "system_fingerprint": common.SYSTEM_FINGERPRINT,
            "choices": results, "usage": job.usage()}


async def _collect(job: CompletionJob, choice: Choice) -> dict[str, Any]:
    texts, entries = [], []
    async for text, logprobs in choice.generation.pieces():
        texts.append(text)
        entries.extend(logprobs or ())
    head = choice.prompt_text if job.echo else ""
    return {"text": head + "".join(texts), "index": choice.index,
            "logprobs": _legacy_logprobs(entries, len(head)) if job.logprobs >= 0 else None,
            "finish_reason": choice.generation.finish_reason}


def _chunk(job: CompletionJob, choice: Choice, text: str, finish: str | None,
           logprobs: dict | None) -> bytes:
    return sse_data(_chunk_object(job, choice, text, finish, logprobs))


def _chunk_object(job: CompletionJob, choice: Choice, text: str, finish: str | None,
                  logprobs: dict | None) -> dict[str, Any]:
    obj = {"id": job.id, "object": "text_completion", "created": job.created,
           "model": job.model.name, "system_fingerprint": common.SYSTEM_FINGERPRINT,
           "choices": [{"text": text, "index": choice.index, "logprobs": logprobs,
                        "finish_reason": finish}]}
    if job.include_usage:
        obj["usage"] = None
    return obj


async def _stream(job: CompletionJob) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    pumps = [asyncio.create_task(_pump(job, choice, queue)) for choice in job.choices]
    try:
        for _ in pumps:
            while (item := await queue.get()) is not None:
                if isinstance(item, GenerationError):
                    yield sse_data(openai_error_body(generation_failed(str(item))))
                    yield SSE_DONE
                    return
                yield item
        if job.include_usage:
            yield sse_data({"id": job.id, "object": "text_completion", "created": job.created,
                              "model": job.model.name, "choices": [], "usage": job.usage()})
        yield SSE_DONE
    finally:
        for pump in pumps:
            pump.cancel()


async def _pump(job: CompletionJob, choice: Choice,
                queue: asyncio.Queue[bytes | BaseException | None]) -> None:
    """One choice's chunks into the shared queue; ``None`` when it is done."""
    offset = 0
    texts = TextEvents(_chunk_object(job, choice, TEXT_SLOT, None, None))
    try:
        if job.echo:
            queue.put_nowait(texts.event(choice.prompt_text))
            offset = len(choice.prompt_text)
        async for text, entries in choice.generation.pieces():
            if job.logprobs < 0:
                queue.put_nowait(texts.event(text))
                continue
            logprobs = _legacy_logprobs(entries or [], offset)
            offset += len(text)
            queue.put_nowait(_chunk(job, choice, text, None, logprobs))
        queue.put_nowait(_chunk(job, choice, "", choice.generation.finish_reason, None))
    except GenerationError as exc:
        queue.put_nowait(exc)
    queue.put_nowait(None)
