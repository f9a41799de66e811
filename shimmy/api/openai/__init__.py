"""The OpenAI-compatible API under ``/v1``."""

from __future__ import annotations

from shimmy.api.openai import responses
from shimmy.api.openai.chat import ChatCompletions
from shimmy.api.openai.completions import Completions
from shimmy.api.openai.embeddings import Embeddings
from shimmy.api.openai.errors import openai_error_body
from shimmy.api.openai.models import Models
from shimmy.api.state import AppState
from shimmy.http.router import Router


def register(router: Router, state: AppState) -> None:
    models = Models(state)
    router.add("GET", "/v1/models", models.list)
    router.add("GET", "/v1/models/{id}", models.retrieve)
    router.add("POST", "/v1/chat/completions", ChatCompletions(state).handle)
    router.add("POST", "/v1/completions", Completions(state).handle)
    router.add("POST", "/v1/embeddings", Embeddings(state).handle)
    responses.register(router, state)
    router.error_shape("/v1", openai_error_body)
