"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

from typing import Any

from shimmy.api.state import AppState
from shimmy.http.types import Request, Response
from shimmy.models.discovery import ModelEntry


class Models:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def list(self, request: Request) -> Response:
        entries = self.state.registry.entries()
        return Response.json({"object": "list", "data": [model_object(e) for e in entries]})

    async def retrieve(self, request: Request) -> Response:
        entry = self.state.registry.resolve(request.path_params["id"])
        return Response.json(model_object(entry))


def model_object(entry: ModelEntry) -> dict[str, Any]:
    try:
        created = int(entry.path.stat().st_mtime)
    except OSError:
        created = 0
    return {"id": entry.name, "object": "model", "created": created, "owned_by": "shimmy"}
