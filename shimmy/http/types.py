"""What the server hands to handlers and what handlers hand back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shimmy.errors import invalid_request


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    client: str = ""
    path_params: dict[str, str] = field(default_factory=dict)  # from ``{name}`` route segments

    def json(self) -> Any:
        """The body parsed as JSON; malformed JSON is an ``invalid_request``."""
        if not self.body:
            raise invalid_request("The request body is empty; a JSON object is expected")
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise invalid_request(f"The request body is not valid JSON: {exc}") from None


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(obj, ensure_ascii=False).encode())


@dataclass(slots=True)
class StreamResponse:
    """A body sent with chunked transfer encoding as the iterator yields.

    If the client goes away the server closes ``chunks`` (``aclose``), so the
    generator's ``finally`` runs and can cancel the work behind it.
    """

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: list[tuple[str, str]] = field(default_factory=list)


class WebSocket(Protocol):
    async def receive_text(self) -> str | None:
        """The next text message; ``None`` once the connection is closed."""

    async def send_text(self, text: str) -> None:
        """Send one text message; does nothing if the connection is closed."""

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    @property
    def closed(self) -> bool: ...


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]
WebSocketHandler = Callable[[WebSocket], Awaitable[None]]
