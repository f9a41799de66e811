"""What Ollama's routes share: names, errors in Ollama's shape, timestamps, timings."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shimmy.engine.pool import ModelPool
from shimmy.engine.scheduler import Generation
from shimmy.errors import ApiError
from shimmy.models.discovery import ModelEntry
from shimmy.models.registry import ModelRegistry

DEFAULT_TAG = ":latest"
HOW_TO_ADD = ("shimmy serves the GGUF files it finds and does not download or store models: "
              "put the file in a folder given with --model-dirs (or pass --model-path FILE) "
              "and restart shimmy serve; 'shimmy discover' shows where it looks")
_NOT_AVAILABLE = re.compile(r"^Model '(.*)' is not available$", re.S)


class ModelNotFound(ApiError):
    """shimmy's ``model_not_found``, which the Ollama listener words as Ollama does."""

    def __init__(self, name: str) -> None:
        super().__init__(404, "model_not_found", "The specified model was not found",
                         f"Model '{name}' is not available")
        self.model_name = name


def ollama_error(status: int, text: str, code: str = "invalid_request") -> ApiError:
    """An error whose Ollama body is ``{"error": text}``."""
    return ApiError(status, code, text, text)


def bad_request(text: str) -> ApiError:
    return ollama_error(400, text)


def ollama_error_body(error: ApiError) -> dict[str, Any]:
    """Ollama's error shape: ``{"error": "message"}``."""
    name = getattr(error, "model_name", None)
    if name is None and error.code == "model_not_found":
        found = _NOT_AVAILABLE.match(error.details)
        name = found[1] if found else None
    if name is not None:
        return {"error": f'model "{name}" not found, try pulling it first'}
    if error.details and error.details != error.message:
        text = error.details if error.message in _GENERIC else \
            f"{error.message}: {error.details}"
        return {"error": text}
    return {"error": error.message}


# shimmy's catch-all messages, which say less than their details
_GENERIC = frozenset({"Request format is invalid", "No such route", "Method not allowed",
                      "Internal server error", "Text generation failed", "Request refused"})


def ollama_name(entry: ModelEntry) -> str:
    return entry.name if ":" in entry.name else entry.name + DEFAULT_TAG


def resolve(registry: ModelRegistry, name: str) -> ModelEntry:
    """The entry for an Ollama-style name: ``x:latest`` also finds the model ``x``."""
    try:
        return registry.resolve(name)
    except ApiError as exc:
        wanted = name.strip()
        if exc.code != "model_not_found":
            raise
        if wanted.lower().endswith(DEFAULT_TAG) and len(wanted) > len(DEFAULT_TAG):
            try:
                return registry.resolve(wanted[:-len(DEFAULT_TAG)])
            except ApiError:
                pass
        raise ModelNotFound(name) from None


def model_field(body: Any) -> str:
    """The request's model name (``name`` is Ollama's older spelling)."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object")
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad_request("model is required")
    return name


def created_at() -> str:
    """Now, as Ollama writes ``created_at``: RFC 3339 in UTC with a ``Z``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def nanoseconds(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


@dataclass(slots=True)
class Clock:
    """When a request started and when its model was ready, for Ollama's durations."""

    started: float
    loaded: float | None = None

    @classmethod
    def start(cls) -> Clock:
        return cls(time.perf_counter())

    def model_ready(self) -> None:
        self.loaded = time.perf_counter()

    def metrics(self, generation: Generation | None = None,
                prompt_tokens: int | None = None) -> dict[str, int]:
        """``total_duration`` and ``load_duration``; with a generation, its counts and
        prompt and generation times as measured (nanoseconds)."""
        now = time.perf_counter()
        loaded = self.loaded if self.loaded is not None else now
        values = {"total_duration": nanoseconds(now - self.started),
                  "load_duration": nanoseconds(loaded - self.started)}
        if generation is None:
            return values
        first = generation.first_piece_at or generation.finished_at or now
        finished = generation.finished_at or now
        values.update(
            prompt_eval_count=generation.prompt_tokens if prompt_tokens is None
            else prompt_tokens,
            prompt_eval_duration=nanoseconds(first - generation.submitted_at),
            eval_count=generation.completion_tokens,
            eval_duration=nanoseconds(finished - first),
        )
        return values


async def load_or_unload(pool: ModelPool, entry: ModelEntry, keep: float | None) -> str:
    """An empty prompt (or no messages) loads the model, or with ``keep_alive`` 0 unloads
    it; the ``done_reason`` to answer."""
    if keep == 0:
        await pool.unload(entry.name)
        return "unload"
    await pool.get(entry.name, keep)
    return "load"


def done_reason(reason: str | None) -> str:
    """Ollama's ``done_reason``: ``stop`` (tool calls included) or ``length``."""
    return "length" if reason == "length" else "stop"
