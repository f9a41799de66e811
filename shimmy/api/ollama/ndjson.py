"""Newline-delimited JSON, Ollama's streaming format: one object a line."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from shimmy.api.ollama.common import ollama_error_body
from shimmy.api.streams import CancellingStream
from shimmy.errors import ApiError, server_error
from shimmy.http.types import StreamResponse

NDJSON = "application/x-ndjson"
log = logging.getLogger("shimmy.api")


def line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def ndjson_response(objects: AsyncIterator[dict[str, Any]],
                    cancel: Callable[[], None] = lambda: None) -> StreamResponse:
    """Stream ``objects`` a line each; an error once the stream has begun goes out as a
    last ``{"error": ...}`` line, as Ollama sends it; ``cancel`` runs when the client
    goes away or the stream ends."""
    return StreamResponse(CancellingStream(_lines(objects), cancel), content_type=NDJSON)


async def _lines(objects: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for obj in objects:
            yield line(obj)
    except ApiError as exc:
        yield line(ollama_error_body(exc))
    except Exception as exc:  # the stream has begun: report in band, never hang the client
        log.exception("stream failed")
        yield line(ollama_error_body(server_error(str(exc))))
