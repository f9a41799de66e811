"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

import contextlib
from typing import Any

from shimmy.api.state import AppState
from shimmy.errors import ApiError
from shimmy.http.types import Request, Response
from shimmy.models.discovery import ModelEntry


class Models:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def list(self, request: Request) -> Response:
        registry = self.state.registry
        data = [model_object(e) for e in registry.entries()]
        listed = {item["id"].lower() for item in data}
        for pattern, _ in registry.aliases:  # literal --model-alias names, as their model
            if "*" in pattern or "?" in pattern or "[" in pattern or pattern.lower() in listed:
                continue
            with contextlib.suppress(ApiError):
                data.append(model_object(registry.resolve(pattern), pattern))
                listed.add(pattern.lower())
        return Response.json({"object": "list", "data": data})

    async def retrieve(self, request: Request) -> Response:
        name = request.path_params["id"]
        entry = self.state.registry.resolve(name)
        aliased = name.lower() != entry.name.lower() and \
            self.state.registry.alias_target(name) is not None
        return Response.json(model_object(entry, name if aliased else None))


def model_object(entry: ModelEntry, alias: str | None = None) -> dict[str, Any]:
    """The model, under its own name or the ``--model-alias`` name that maps to it."""
    try:
        created = int(entry.path.stat().st_mtime)
    except OSError:
        created = 0
    return {"id": alias or entry.name, "object": "model", "created": created,
            "owned_by": "shimmy"}
