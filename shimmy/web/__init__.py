"""The chat page at ``GET /``: plain HTML, CSS and JavaScript shipped inside the package.

Nothing is fetched from elsewhere: the page talks to this server's ``/v1`` routes only,
so it works offline. The Content-Security-Policy allows scripts and styles from this
server alone, a second line of defence behind the page building every node from text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources

from shimmy.http.router import Router
from shimmy.http.types import Request, Response

ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/style.css": ("style.css", "text/css; charset=utf-8"),
}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)


def register(router: Router) -> None:
    for path, (name, content_type) in ASSETS.items():
        router.add("GET", path, _asset_handler(name, content_type))


def _asset_handler(name: str, content_type: str) -> Callable[[Request], Awaitable[Response]]:
    async def serve_asset(request: Request) -> Response:
        return Response(200, asset_bytes(name), content_type, list(_HEADERS))

    return serve_asset


@cache
def asset_bytes(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()
