"""Look models up by the name a client sends."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shimmy.errors import ApiError, model_not_found
from shimmy.models.discovery import DiscoveryReport, ModelEntry, discover

DEFAULT_ALIASES = ("", "default")
# names Claude Code asks for (its default, haiku for background work): the default model
CLAUDE_PREFIX = "claude-"

log = logging.getLogger("shimmy.models")


class ModelRegistry:
    """The models of one discovery run, in priority order; the first is the default."""

    def __init__(self, report: DiscoveryReport,
                 aliases: Sequence[tuple[str, str]] = ()) -> None:
        self.report = report
        self._by_name = {entry.name.lower(): entry for entry in report.models}
        # ``--model-alias PATTERN=MODEL``: fnmatch patterns, the first that matches wins
        self.aliases = [(pattern.strip(), target.strip()) for pattern, target in aliases]
        self._defaulted: set[str] = set()  # claude- names already logged

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
        if entry is None and (target := self.alias_target(wanted)) is not None:
            entry = self._lookup(target.lower())
            if entry is None and target.lower() in DEFAULT_ALIASES:
                entry = self.default()
            if entry is None:
                raise ApiError(404, "model_not_found", "The specified model was not found",
                               f"Model '{name}' is an alias of '{target}', which is not "
                               "available")
        if entry is None and wanted.startswith(CLAUDE_PREFIX):
            entry = self._claude_default(wanted)
        if entry is None:
            raise model_not_found(name or "default")
        return entry

    def alias_target(self, name: str) -> str | None:
        """The model an alias pattern maps ``name`` to (case-insensitive), if one does."""
        for pattern, target in self.aliases:
            if fnmatch.fnmatchcase(name.lower(), pattern.lower()):
                return target
        return None

    def _claude_default(self, wanted: str) -> ModelEntry | None:
        entry = self.default()
        if entry is not None and wanted not in self._defaulted:
            self._defaulted.add(wanted)
            log.warning("model '%s' is served by the default model %s (map it with "
                        "--model-alias PATTERN=MODEL)", wanted, entry.name)
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
