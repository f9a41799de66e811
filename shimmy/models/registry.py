"""Look models up by the name a client sends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shimmy.errors import model_not_found
from shimmy.models.discovery import DiscoveryReport, ModelEntry, discover

DEFAULT_ALIASES = ("", "default")


class ModelRegistry:
    """The models of one discovery run, in priority order; the first is the default."""

    def __init__(self, report: DiscoveryReport) -> None:
        self.report = report
        self._by_name = {entry.name.lower(): entry for entry in report.models}

    @classmethod
    def from_config(
        cls, model_path: Path | None = None, model_dirs: Sequence[Path] = (), **options: Any
    ) -> ModelRegistry:
        """Run ``discover`` (same arguments) and wrap its report."""
        return cls(discover(model_path, model_dirs, **options))

    def names(self) -> list[str]:
        return [entry.name for entry in self.report.models]

    def entries(self) -> list[ModelEntry]:
        return list(self.report.models)

    def default(self) -> ModelEntry | None:
        return self.report.default

    def resolve(self, name: str | None) -> ModelEntry:
        """The entry for ``name`` (case-insensitive); None, "" and "default" mean the default.

        Raises the API's model_not_found error for unknown names or when there is no model.
        """
        wanted = (name or "").strip().lower()
        entry = self._lookup(wanted)
        if entry is None and wanted in DEFAULT_ALIASES:
            entry = self.default()
        if entry is None:
            raise model_not_found(name or "default")
        return entry

    def _lookup(self, wanted: str) -> ModelEntry | None:
        # Also accept what clients commonly send: a file name, an Ollama name without its
        # tag, or our names with the ":latest" that Ollama's listing adds to them.
        candidates = (wanted, wanted.removesuffix(".gguf"), f"{wanted}:latest",
                      wanted.removesuffix(":latest"))
        for candidate in candidates:
            if candidate in self._by_name:
                return self._by_name[candidate]
        return None
