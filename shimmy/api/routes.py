"""Every route the server answers, by API family."""

from __future__ import annotations

from shimmy import web
from shimmy.api import anthropic, metrics, native, ollama, openai
from shimmy.api.state import AppState
from shimmy.http.router import Router


def build_router(state: AppState) -> Router:
    router = Router()
    native.register(router, state)
    metrics.register(router, state)  # GET /metrics, Prometheus text
    ollama.register(router, state)
    anthropic.register(router, state)  # before openai: its error shape wins under /v1
    openai.register(router, state)
    web.register(router)  # the chat page at /
    return router
