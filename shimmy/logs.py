"""Logging set-up and the request log: one line per request, as text or as JSON.

The HTTP server opens a ``RequestRecord`` for every request (and for every message on a
WebSocket) and makes it the current one for the handler's task; handlers attach the
generations they start (``attach``), so the line written when the request ends can name
the model, the token counts and the timings. Prompts and generated text are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ACCESS_LOGGER = "shimmy.access"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

access_log = logging.getLogger(ACCESS_LOGGER)


@dataclass(slots=True)
class RequestRecord:
    """What one request did; filled in by the server and by the handlers it calls."""

    id: str
    method: str
    path: str  # without the query string, which may hold anything
    client: str = ""
    kind: str = "http"  # "http", or "websocket" for one message on a WebSocket
    route: str = ""  # the route's template ("/v1/models/{id}"); "" when none matched
    status: int = 0  # 0 while unknown (a WebSocket message has none)
    note: str = ""  # why it ended unusually: "rejected: ...", "cancelled", ...
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    model: str | None = None
    generations: list[Any] = field(default_factory=list)

    @property
    def duration(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return end - self.started

    def finish(self, status: int | None = None, note: str = "") -> bool:
        """Close the record; ``False`` if it was already closed (report it only once)."""
        if self.finished is not None:
            return False
        self.finished = time.perf_counter()
        if status is not None:
            self.status = status
        if note:
            self.note = note
        return True


current_request: ContextVar[RequestRecord | None] = ContextVar("shimmy_request", default=None)


def request_id(client_value: str | None = None) -> str:
    """The client's ``X-Request-Id`` when it is a sane token, else a fresh random one."""
    if client_value and _CLIENT_REQUEST_ID.fullmatch(client_value):
        return client_value
    return secrets.token_hex(8)


def attach(model: str, generation: Any) -> None:
    """Tie a generation to the request being handled, for its log line and metrics."""
    record = current_request.get()
    if record is not None:
        record.model = model
        record.generations.append(generation)


# --- what a request's line says ---


def generation_outcome(generation: Any) -> str:
    if getattr(generation, "error", None) is not None:
        return "error"
    if getattr(generation, "finish_reason", None) is not None:
        return str(generation.finish_reason)
    return "cancelled"


def time_to_first_token(generation: Any) -> float | None:
    first = getattr(generation, "first_piece_at", None)
    return None if first is None else first - generation.submitted_at


def decode_rate(generation: Any) -> float | None:
    """Tokens per second after the first one, or None when there is too little to tell."""
    first, end = generation.first_piece_at, generation.finished_at
    tokens = generation.completion_tokens
    if first is None or end is None or tokens < 2 or end <= first:
        return None
    return (tokens - 1) / (end - first)


def record_fields(record: RequestRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {"event": "request", "id": record.id, "kind": record.kind,
                              "method": record.method, "path": record.path,
                              "route": record.route or None,
                              "status": record.status or None, "client": record.client,
                              "duration_ms": round(record.duration * 1000, 1)}
    if record.note:
        fields["note"] = record.note
    if record.generations:
        fields.update(_generation_fields(record))
    return {key: value for key, value in fields.items() if value is not None}


def _generation_fields(record: RequestRecord) -> dict[str, Any]:
    generations = record.generations
    first = generations[0]
    ttft = time_to_first_token(first)
    rate = decode_rate(first) if len(generations) == 1 else None
    return {
        "model": record.model,
        "prompt_tokens": sum(g.prompt_tokens for g in generations),
        "completion_tokens": sum(g.completion_tokens for g in generations),
        "cached_tokens": sum(g.cached_tokens for g in generations),
        "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
        "tokens_per_s": None if rate is None else round(rate, 1),
        "outcome": ",".join(generation_outcome(g) for g in generations),
    }


def log_request(record: RequestRecord) -> None:
    if access_log.isEnabledFor(logging.INFO):
        fields = record_fields(record)
        access_log.info(_logfmt(fields), extra={"fields": fields})


def _logfmt(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if key == "event":
            continue
        text = str(value)
        if not text or any(c in text for c in ' "=\\') or not text.isprintable():
            text = json.dumps(text, ensure_ascii=True)
        parts.append(f"{key}={text}")
    return "request " + " ".join(parts)


# --- set-up ---


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "warning", log_format: str = "text") -> None:
    """Send shimmy's logs to stderr at ``level``, as plain text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    # like basicConfig, leaves alone a root logger that already has handlers (pytest's)
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
