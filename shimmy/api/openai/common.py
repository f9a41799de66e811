"""What the OpenAI routes share: ids, usage, log-probabilities, sampling fields, SSE."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from shimmy.api import params
from shimmy.api.streams import CancellingStream, with_pings
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.scheduler import Generation, Sampling
from shimmy.errors import invalid_request
from shimmy.http.sse import SSE_PING
from shimmy.http.types import Response, StreamResponse

SYSTEM_FINGERPRINT = "fp_shimmy"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def usage(generation: Generation) -> dict[str, Any]:
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": generation.cached_tokens},
    }


def sampling(body: dict[str, Any]) -> Sampling:
    """OpenAI's defaults: temperature 1 and top_p 1."""
    return params.sampling(body, temperature=1.0, top_p=1.0)


def require_n_one(body: dict[str, Any]) -> None:
    n = params.integer(body, "n", 1, 1, 128)
    if n != 1:
        raise invalid_request(f"'n' is {n}; shimmy generates one choice per request (n=1)",
                              param="n")


def max_tokens(body: dict[str, Any], model: LoadedModel, n_prompt: int,
               keys: tuple[str, ...], default: int | None) -> int:
    """The completion budget: the first of ``keys`` given, else ``default``, else the
    rest of the context."""
    room = model.n_ctx - n_prompt
    for key in keys:
        if body.get(key) is not None:
            return params.integer(body, key, 0, 1, 10_000_000)
    if room < 1:
        raise invalid_request(
            f"The prompt has {n_prompt} tokens: it fills the model's context of "
            f"{model.n_ctx} tokens", "Prompt exceeds the context length", "messages")
    return min(default, room) if default is not None else room


def stream_options(body: dict[str, Any], stream: bool) -> bool:
    """Whether the stream ends with a usage chunk (``stream_options.include_usage``)."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise invalid_request("'stream_options' is only allowed with 'stream': true",
                              param="stream_options")
    if not isinstance(options, dict):
        raise invalid_request("'stream_options' must be an object", param="stream_options")
    return params.boolean(options, "include_usage", False)


def chat_logprobs(entries: list | None) -> list[dict[str, Any]]:
    """Engine log-probabilities in the chat shape: ``logprobs.content[]``."""
    return [
        {
            "token": _text(piece),
            "logprob": logprob,
            "bytes": list(piece),
            "top_logprobs": [{"token": _text(p), "logprob": lp, "bytes": list(p)}
                             for _, p, lp in top],
        }
        for _, piece, logprob, top in entries or ()
    ]


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", "replace")


async def respond(generation: Generation, stream: bool,
                  chunks: Callable[[], AsyncIterator[bytes]],
                  body: Callable[[], Awaitable[dict[str, Any]]]) -> Response | StreamResponse:
    """A streamed answer (with pings, cancelled when the client goes away) or a whole one."""
    if stream:
        return StreamResponse(CancellingStream(
            with_pings(chunks(), generation, lambda: SSE_PING), generation.cancel))
    return Response.json(await body())
