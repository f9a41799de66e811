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


def build_ollama_router(state: AppState) -> Router:
    """The Ollama listener's routes: Ollama's API, and the ``/v1`` routes as Ollama has
    them too. shimmy's own routes (its ``/api/generate``, the chat page) stay on its port."""
    router = Router()
    anthropic.register(router, state)  # before openai: its error shape wins under /v1
    openai.register(router, state)
    ollama.register_listener(router, state)  # Ollama's error shape everywhere else
    return router
