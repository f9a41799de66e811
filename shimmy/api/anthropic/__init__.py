"""Anthropic's Messages API, for the anthropic packages and Claude Code.

``POST /v1/messages`` (tools, tool results, thinking, streamed as Anthropic streams) and
``POST /v1/messages/count_tokens``, both also under ``?beta=true`` (the query string
plays no part in routing). ``translate`` reads the body into the chat layer's request,
``stream`` writes the chat layer's events back as content blocks.
"""

from __future__ import annotations

from typing import Any

from shimmy.api import params
from shimmy.api.anthropic.errors import anthropic_error_body
from shimmy.api.anthropic.stream import MessageJob, respond
from shimmy.api.anthropic.translate import chat_request
from shimmy.api.state import AppState
from shimmy.chat.run import count_tokens, start_chat
from shimmy.http.router import Router
from shimmy.http.types import Request, Response, StreamResponse

__all__ = ["Messages", "anthropic_error_body", "register"]


def register(router: Router, state: AppState) -> None:
    messages = Messages(state)
    router.add("POST", "/v1/messages", messages.handle)
    router.add("POST", "/v1/messages/count_tokens", messages.count_tokens)
    router.error_shape("/v1/messages", anthropic_error_body)


class Messages:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def handle(self, request: Request) -> Response | StreamResponse:
        job = await self.start(params.require_object(request.json()), request.headers)
        return await respond(job)

    async def start(self, body: dict[str, Any], headers: dict[str, str]) -> MessageJob:
        chat = chat_request(body, headers)  # bad input fails before a model is loaded
        stream = params.boolean(body, "stream", False)
        model = await self.state.pool.get(params.string(body, "model", "default"))
        return MessageJob(await start_chat(model, chat), stream)

    async def count_tokens(self, request: Request) -> Response:
        """``{"input_tokens": N}``: the prompt with its template and tools, tokenized."""
        body = params.require_object(request.json())
        chat = chat_request(body, request.headers, need_max_tokens=False)
        model = await self.state.pool.get(params.string(body, "model", "default"))
        return Response.json({"input_tokens": await count_tokens(model, chat)})
