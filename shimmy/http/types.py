"""What the server hands to handlers and what handlers hand back."""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Protocol

from shimmy.errors import ApiError, invalid_request
from shimmy.logs import RequestRecord

MAX_JSON_DEPTH = 64  # arrays and objects inside each other; no API needs more than ~20


def parse_json(data: bytes | str, what: str = "request body") -> Any:
    """JSON text to Python values; malformed or too deeply nested JSON is an
    ``invalid_request``. Depth is checked first: deep nesting would exhaust the recursion
    limit in the parser, or in whatever walks the value later."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if nests_deeper_than(raw, MAX_JSON_DEPTH):
        raise invalid_request(f"The {what} nests arrays and objects more than "
                              f"{MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(data)
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer of over 4300 digits
        raise invalid_request(f"The {what} is not valid JSON: {exc}") from None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET_STEPS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")  # +1 and -1 as signed bytes
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nests_deeper_than(data: bytes, limit: int) -> bool:
    """Whether the brackets of JSON text nest more than ``limit`` deep, without recursion
    and at C speed: drop the strings, turn brackets into +1/-1, take the running sum's
    maximum (about a second for 16 MiB of nothing but brackets)."""
    steps = _JSON_STRING.sub(b"", data).translate(_BRACKET_STEPS, _NOT_BRACKETS)
    return max(accumulate(array("b", steps)), default=0) > limit


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    client: str = ""
    path_params: dict[str, str] = field(default_factory=dict)  # from ``{name}`` route segments
    id: str = ""  # the request id in the log and the ``x-request-id`` response header

    def json(self) -> Any:
        """The body parsed as JSON; malformed or too deeply nested JSON is an
        ``invalid_request``."""
        if not self.body:
            raise invalid_request("The request body is empty; a JSON object is expected")
        return parse_json(self.body)


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


class RequestPolicy(Protocol):
    """Who may make a request; asked once its head (method, path, headers) has arrived."""

    def check(self, request: Request) -> ApiError | None:
        """Why the request must be refused (401, 403), or None."""

    def preflight(self, request: Request) -> Response | None:
        """The answer to a CORS preflight request, or None if it is not one."""

    def response_headers(self, request: Request) -> list[tuple[str, str]]:
        """Headers to add to the response (CORS)."""


class ServerObserver(Protocol):
    """What the server reports as it works (the metrics)."""

    def request_started(self, record: RequestRecord) -> None: ...

    def request_finished(self, record: RequestRecord) -> None: ...

    def rejected(self, reason: str) -> None:
        """A connection refused before any request was read (``reason``: "connections")."""

    def connections_changed(self, open_connections: int) -> None: ...


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]
WebSocketHandler = Callable[[WebSocket], Awaitable[None]]
