"""Every route the server answers, by API family."""

from __future__ import annotations

from shimmy.api import native
from shimmy.api.state import AppState
from shimmy.http.router import Router


def build_router(state: AppState) -> Router:
    router = Router()
    native.register(router, state)
    return router
