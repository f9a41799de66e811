"""Loaded models by name: each loads on first use, once, off the event loop."""

from __future__ import annotations

import asyncio
import logging

from shimmy.engine.loaded import EngineSettings, LoadedModel
from shimmy.errors import ApiError
from shimmy.models.registry import ModelRegistry

log = logging.getLogger("shimmy.engine")


class ModelPool:
    def __init__(self, registry: ModelRegistry, settings: EngineSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._loaded: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    @property
    def loaded(self) -> dict[str, LoadedModel]:
        return dict(self._loaded)

    async def get(self, name: str | None) -> LoadedModel:
        """The loaded model for a request's ``model`` field (``default`` allowed)."""
        entry = self.registry.resolve(name)
        if (model := self._usable(entry.name)) is not None:
            return model
        lock = self._loading.setdefault(entry.name, asyncio.Lock())
        async with lock:
            if (model := self._usable(entry.name)) is not None:
                return model
            try:
                model = await asyncio.to_thread(
                    LoadedModel, entry.name, entry.path, self.settings, list(entry.loras),
                    entry.info)
            except Exception as exc:
                log.error("loading %s failed: %s", entry.name, exc)
                raise ApiError(500, "generation_failed",
                               f"Model '{entry.name}' could not be loaded", str(exc)) from None
            self._loaded[entry.name] = model
            return model

    def _usable(self, name: str) -> LoadedModel | None:
        """The loaded model; one whose scheduler thread died is dropped, to load afresh."""
        model = self._loaded.get(name)
        scheduler = model.scheduler if model is not None else None
        if model is None or scheduler is None or scheduler.alive:
            return model
        log.error("the scheduler of %s died (%s): reloading the model", name, scheduler.failed)
        del self._loaded[name]
        model.close()
        return None

    def close(self) -> None:
        for model in self._loaded.values():
            model.close()
        self._loaded.clear()
