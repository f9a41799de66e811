"""Routes from method and path to handlers, with ``{name}`` path segments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from shimmy.errors import ApiError, method_not_allowed, not_found
from shimmy.http.types import Handler, Request, Response, StreamResponse, WebSocketHandler

ErrorShape = Callable[[ApiError], dict[str, Any]]


class RouteError(ApiError):
    """An ``ApiError`` whose response carries extra headers (``Allow``, ``Upgrade``)."""

    def __init__(self, error: ApiError, headers: list[tuple[str, str]]) -> None:
        super().__init__(error.status, error.code, error.message, error.details)
        self.headers = headers


@dataclass(frozen=True, slots=True)
class _Segment:
    text: str  # the literal text, or the parameter name
    is_param: bool


def _compile(path: str) -> tuple[_Segment, ...]:
    if not path.startswith("/"):
        raise ValueError(f"route path must start with '/': {path!r}")
    segments = []
    for part in path.split("/")[1:]:
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if not name.isidentifier():
                raise ValueError(f"bad parameter name {name!r} in route {path!r}")
            segments.append(_Segment(name, is_param=True))
        else:
            segments.append(_Segment(part, is_param=False))
    return tuple(segments)


def _split(path: str) -> list[str] | None:
    """Raw (still percent-encoded) segments, so ``%2F`` stays inside its segment."""
    return path.split("/")[1:] if path.startswith("/") else None


def _match(pattern: tuple[_Segment, ...], parts: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(parts):
        return None
    params: dict[str, str] = {}
    for segment, part in zip(pattern, parts, strict=True):
        value = unquote(part) if "%" in part else part
        if segment.is_param:
            if not value:
                return None
            params[segment.text] = value
        elif value != segment.text:
            return None
    return params


@dataclass(slots=True)
class _PathRoutes:
    pattern: tuple[_Segment, ...]
    handlers: dict[str, Handler] = field(default_factory=dict)

    def handler_for(self, method: str) -> Handler | None:
        handler = self.handlers.get(method)
        if handler is None and method == "HEAD":
            handler = self.handlers.get("GET")
        return handler

    def allowed(self) -> list[str]:
        methods = list(self.handlers)
        if "GET" in methods and "HEAD" not in methods:
            methods.insert(methods.index("GET") + 1, "HEAD")
        if "OPTIONS" not in methods:
            methods.append("OPTIONS")
        return methods


def _options_handler(allowed: list[str]) -> Handler:
    async def answer_options(request: Request) -> Response | StreamResponse:
        return Response(204, b"", headers=[("allow", ", ".join(allowed))])

    return answer_options


_WEBSOCKET_ALLOWED = ["GET", "OPTIONS"]


class Router:
    """Maps ``(method, path)`` to a handler.

    HEAD is served by the GET handler, OPTIONS is answered with ``204`` and ``Allow``
    unless a route registers it. Among routes matching a path, the first one added that
    has the method wins.
    """

    def __init__(self) -> None:
        self._routes: dict[str, _PathRoutes] = {}
        self._websockets: list[tuple[str, tuple[_Segment, ...], WebSocketHandler]] = []
        self._error_shapes: list[tuple[str, ErrorShape]] = []

    def error_shape(self, prefix: str, shape: ErrorShape) -> None:
        """Errors on paths under ``prefix`` use ``shape`` (another API family's format)."""
        self._error_shapes.append((prefix.rstrip("/"), shape))

    def error_body(self, path: str, error: ApiError) -> dict[str, Any]:
        """The JSON body for ``error`` in the format of the API family ``path`` belongs to."""
        for prefix, shape in self._error_shapes:
            if path == prefix or path.startswith(prefix + "/"):
                return shape(error)
        return error.body()

    def add(self, method: str, path: str, handler: Handler) -> None:
        routes = self._routes.get(path)
        if routes is None:
            routes = self._routes[path] = _PathRoutes(_compile(path))
        routes.handlers[method.upper()] = handler

    def add_websocket(self, path: str, handler: WebSocketHandler) -> None:
        self._websockets.append((path, _compile(path), handler))

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path parameters for a request; ``ApiError`` 404/405/426 if none."""
        parts = _split(path)
        if parts is None:
            raise not_found(path)
        allowed: list[str] = []
        for routes in self._routes.values():
            params = _match(routes.pattern, parts)
            if params is None:
                continue
            handler = routes.handler_for(method)
            if handler is not None:
                return handler, params
            allowed.extend(m for m in routes.allowed() if m not in allowed)
        if not allowed and self._websocket_match(parts) is not None:
            if method in ("GET", "HEAD"):
                raise _upgrade_required(path)
            allowed = _WEBSOCKET_ALLOWED
        if not allowed:
            raise not_found(path)
        if method == "OPTIONS":
            return _options_handler(allowed), {}
        error = method_not_allowed(method, path, allowed)
        raise RouteError(error, [("allow", ", ".join(allowed))])

    def websocket_handler(self, path: str) -> WebSocketHandler | None:
        parts = _split(path)
        return None if parts is None else self._websocket_match(parts)

    def _websocket_match(self, parts: list[str]) -> WebSocketHandler | None:
        for _, pattern, handler in self._websockets:
            if _match(pattern, parts) is not None:
                return handler
        return None

    def route_for(self, path: str) -> str | None:
        """The template of the route ``path`` belongs to (``/v1/models/{id}``), whatever
        the method; None if no route matches. Metrics label requests with it."""
        parts = _split(path)
        if parts is None:
            return None
        for template, routes in self._routes.items():
            if _match(routes.pattern, parts) is not None:
                return template
        for template, pattern, _ in self._websockets:
            if _match(pattern, parts) is not None:
                return template
        return None


def _upgrade_required(path: str) -> RouteError:
    error = ApiError(
        426,
        "invalid_request",
        "WebSocket upgrade required",
        f"'{path}' is a WebSocket endpoint; connect with 'Upgrade: websocket'",
    )
    return RouteError(error, [("upgrade", "websocket")])
