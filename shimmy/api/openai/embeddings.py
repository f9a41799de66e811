"""``POST /v1/embeddings`` for models that produce embeddings."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from shimmy.api import params
from shimmy.api.state import AppState
from shimmy.engine.loaded import LoadedModel
from shimmy.errors import invalid_request
from shimmy.http.types import Request, Response

MAX_INPUTS = 256


class Embeddings:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def handle(self, request: Request) -> Response:
        body = params.require_object(request.json())
        pool = self.state.pool
        model = await pool.get(params.string(body, "model", "default"), params.keep_alive(body))
        encoding = params.string(body, "encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise invalid_request("'encoding_format' must be 'float' or 'base64'",
                                  param="encoding_format")
        inputs = [_tokens(model, item) for item in _inputs(body)]
        with pool.hold(model):  # not unloaded between or during the embeddings
            vectors = [await asyncio.to_thread(model.embed, tokens) for tokens in inputs]
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != len(vectors[0]):
            raise invalid_request(f"'dimensions' must be {len(vectors[0])} for this model",
                                  param="dimensions")
        n_tokens = sum(len(tokens) for tokens in inputs)
        return Response.json({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _encode(v, encoding)}
                     for i, v in enumerate(vectors)],
            "model": model.name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        })


def _inputs(body: dict[str, Any]) -> list[str | list[int]]:
    value = body.get("input")
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value:
        if all(_is_token(t) for t in value):
            return [value]
        if all((isinstance(v, str) and v) or (isinstance(v, list) and v and all(
                _is_token(t) for t in v)) for v in value):
            if len(value) > MAX_INPUTS:
                raise invalid_request(f"at most {MAX_INPUTS} inputs per request",
                                      param="input")
            return value
    raise invalid_request("'input' must be a non-empty string, array of strings, array of "
                          "token ids or array of such arrays", param="input")


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tokens(model: LoadedModel, item: str | list[int]) -> list[int]:
    return model.tokenize(item) if isinstance(item, str) else item


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
