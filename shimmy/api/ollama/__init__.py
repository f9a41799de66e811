"""Ollama's API.

shimmy's own port answers Ollama's listing routes (``register``), which clients probe.
The second listener (``shimmy serve --ollama-bind``, by default 127.0.0.1:11434) speaks
Ollama's API as Ollama does (``register_listener``): ``/api/chat``, ``/api/generate``,
embeddings, listing, model management, ``/`` ("Ollama is running"), errors as
``{"error": "..."}``; the OpenAI and Anthropic routes under ``/v1`` sit beside them there,
as Ollama serves them.
"""

from __future__ import annotations

from shimmy.api.ollama.chat import OllamaChat
from shimmy.api.ollama.common import ollama_error_body
from shimmy.api.ollama.embed import OllamaEmbed
from shimmy.api.ollama.generate import OllamaGenerate
from shimmy.api.ollama.listing import OllamaApi, capabilities, parameter_size
from shimmy.api.ollama.models import OllamaModels
from shimmy.api.state import AppState
from shimmy.http.router import Router
from shimmy.http.types import Request, Response

__all__ = ["capabilities", "parameter_size", "register", "register_listener"]
RUNNING = b"Ollama is running"


def register(router: Router, state: AppState) -> OllamaApi:
    """The listing routes, on either listener."""
    api = OllamaApi(state)
    router.add("GET", "/api/tags", api.tags)
    router.add("POST", "/api/show", api.show)
    router.add("GET", "/api/ps", api.ps)
    router.add("GET", "/api/version", api.version)
    return api


def register_listener(router: Router, state: AppState) -> None:
    """Every Ollama route, for the Ollama listener; its errors in Ollama's shape."""
    listing = register(router, state)
    router.add("POST", "/api/chat", OllamaChat(state).handle)
    router.add("POST", "/api/generate", OllamaGenerate(state).handle)
    embed = OllamaEmbed(state)
    router.add("POST", "/api/embed", embed.embed)
    router.add("POST", "/api/embeddings", embed.embeddings)
    models = OllamaModels(state, listing.digests)
    router.add("POST", "/api/pull", models.pull)
    router.add("POST", "/api/push", models.push)
    router.add("POST", "/api/create", models.create)
    router.add("POST", "/api/copy", models.copy)
    router.add("DELETE", "/api/delete", models.delete)
    router.add("POST", "/api/blobs/{digest}", models.blob)
    router.add("HEAD", "/api/blobs/{digest}", models.blob)
    router.add("GET", "/", running)
    router.error_shape("/", ollama_error_body)


async def running(request: Request) -> Response:
    """What Ollama answers at ``/`` (and to ``HEAD /``), which clients probe."""
    return Response(200, RUNNING, "text/plain; charset=utf-8")

