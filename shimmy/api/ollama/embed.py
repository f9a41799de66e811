"""``POST /api/embed`` and the older ``POST /api/embeddings``, for embedding models.

``/api/embed`` takes ``input`` (a string or strings), ``truncate`` (default true: an input
longer than the context is cut to fit; false: a 400), ``dimensions`` (the vector cut to
that many values and normalised again, as Ollama does) and ``keep_alive``; it answers
``embeddings`` with ``total_duration``, ``load_duration`` and ``prompt_eval_count``.
``/api/embeddings`` takes one ``prompt`` and answers one ``embedding``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from shimmy.api.ollama import fields
from shimmy.api.ollama.common import Clock, bad_request, model_field, resolve
from shimmy.api.openai.embeddings import MAX_INPUTS
from shimmy.api.state import AppState
from shimmy.engine.loaded import LoadedModel
from shimmy.http.types import Request, Response


class OllamaEmbed:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def embed(self, request: Request) -> Response:
        clock = Clock.start()
        body = fields.require_object(request.json())
        inputs = _inputs(body.get("input"))
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise bad_request("truncate must be true or false")
        dimensions = _dimensions(body.get("dimensions"))
        model = await self._model(body)
        clock.model_ready()
        tokens = [_tokens(model, text, truncate) for text in inputs]
        vectors = await self._vectors(model, tokens)
        return Response.json({
            "model": model_field(body),
            "embeddings": [_cut(vector, dimensions) for vector in vectors],
            **clock.metrics(),
            "prompt_eval_count": sum(len(t) for t in tokens),
        })

    async def embeddings(self, request: Request) -> Response:
        body = fields.require_object(request.json())
        prompt = fields.string(body, "prompt")
        model = await self._model(body)
        if not prompt:
            return Response.json({"embedding": []})
        (vector,) = await self._vectors(model, [_tokens(model, prompt, True)])
        return Response.json({"embedding": vector})

    async def _model(self, body: dict[str, Any]) -> LoadedModel:
        entry = resolve(self.state.registry, model_field(body))
        return await self.state.pool.get(entry.name, fields.keep_alive(body))

    async def _vectors(self, model: LoadedModel, inputs: list[list[int]]) -> list[list[float]]:
        with self.state.pool.hold(model):  # not unloaded between or during the embeddings
            return [await asyncio.to_thread(model.embed, tokens) for tokens in inputs]


def _inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if len(value) > MAX_INPUTS:
            raise bad_request(f"at most {MAX_INPUTS} inputs per request")
        return value
    raise bad_request("invalid input type: input must be a string or an array of strings")


def _dimensions(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request("dimensions must be a positive integer")
    return value


def _tokens(model: LoadedModel, text: str, truncate: bool) -> list[int]:
    tokens = model.tokenize(text)
    if not tokens:
        raise bad_request("input is empty")
    limit = model.n_ctx
    if len(tokens) > limit:
        if not truncate:
            raise bad_request(f"the input length ({len(tokens)} tokens) exceeds the context "
                              f"length ({limit} tokens)")
        tokens = tokens[:limit]
    return tokens


def _cut(vector: list[float], dimensions: int | None) -> list[float]:
    if dimensions is None or dimensions >= len(vector):
        return vector
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head
