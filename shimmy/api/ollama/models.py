"""Ollama's model management: ``/api/pull``, ``/push``, ``/create``, ``/copy``, ``/delete``
and ``/api/blobs/{digest}``.

shimmy serves the GGUF files it finds; it does not download, build, copy or delete models.
Clients pull before first use, so a pull of a model shimmy has succeeds with Ollama's
progress stream (the file is already complete); every other call answers a clear error
saying how to add a model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from shimmy.api.ollama import fields
from shimmy.api.ollama.common import HOW_TO_ADD, bad_request, model_field, ollama_error, resolve
from shimmy.api.ollama.listing import DigestCache
from shimmy.api.ollama.ndjson import ndjson_response
from shimmy.api.state import AppState
from shimmy.errors import ApiError
from shimmy.http.types import Request, Response, StreamResponse


class OllamaModels:
    def __init__(self, state: AppState, digests: DigestCache) -> None:
        self.state = state
        self.digests = digests

    async def pull(self, request: Request) -> Response | StreamResponse:
        body = fields.require_object(request.json())
        name = model_field(body)
        streamed = fields.stream(body)
        try:
            entry = resolve(self.state.registry, name)
        except ApiError as exc:
            if exc.code != "model_not_found":
                raise
            raise ollama_error(404, f'pull model manifest: model "{name}" is not among '
                               f"shimmy's models: {HOW_TO_ADD}", "model_not_found") from None
        if not streamed:
            return Response.json({"status": "success"})
        digest = f"sha256:{await self.digests.get(entry)}"
        return ndjson_response(_progress(digest, entry.size))

    async def push(self, request: Request) -> Response:
        model_field(fields.require_object(request.json()))
        raise bad_request("shimmy does not push models to a registry; it serves local GGUF "
                          "files only")

    async def create(self, request: Request) -> Response:
        model_field(fields.require_object(request.json()))
        raise bad_request(f"shimmy does not create models from Modelfiles: {HOW_TO_ADD}")

    async def copy(self, request: Request) -> Response:
        body = fields.require_object(request.json())
        source = body.get("source")
        if not isinstance(source, str) or not source:
            raise bad_request("source is required")
        resolve(self.state.registry, source)
        raise bad_request("shimmy does not copy models; a model's name is its file's name, "
                          "so copy or link the GGUF file itself and restart shimmy serve")

    async def delete(self, request: Request) -> Response:
        entry = resolve(self.state.registry, model_field(fields.require_object(request.json())))
        raise bad_request(f"shimmy does not delete model files; remove {entry.path} yourself "
                          "and restart shimmy serve")

    async def blob(self, request: Request) -> Response:
        if request.method == "HEAD":
            return Response(404)
        raise bad_request(f"shimmy does not store uploaded blobs: {HOW_TO_ADD}")


async def _progress(digest: str, size: int) -> AsyncIterator[dict[str, Any]]:
    """Ollama's pull progress for a model that is already complete."""
    yield {"status": "pulling manifest"}
    yield {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size,
           "completed": size}
    for status in ("verifying sha256 digest", "writing manifest", "success"):
        yield {"status": status}
