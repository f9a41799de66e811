"""Who may use the server, and how much: API key, Host allowlist, Origin and CORS, admission.

``SecurityPolicy`` is what the HTTP server asks about every request as soon as its head
has arrived, before any body is read (see ``shimmy/http/server.py``). ``docs/SECURITY.md``
explains the model; in short:

* Host: on a loopback bind only names that cannot be pointed at this machine by someone
  else's DNS are accepted, so a DNS-rebinding page cannot drive the server.
* Origin: a browser request from another origin is refused unless ``--cors-origin``
  allows it; browsers do not apply CORS to WebSockets or to "simple" POSTs, so refusing
  is what stops a page from using the server, not just from reading the answers.
* API key: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shimmy.errors import ApiError
from shimmy.http.router import RouteError
from shimmy.http.types import Request, Response

ANY = "*"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
PREFLIGHT_MAX_AGE = "600"
PREFLIGHT_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
EXPOSED_HEADERS = "retry-after, x-request-id, www-authenticate"
RETRY_AFTER_SECONDS = 2
DEFAULT_MAX_QUEUE = 64


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def unauthorized() -> ApiError:
    return RouteError(ApiError(401, "unauthorized", "Missing or invalid API key",
                               "Send the key as 'Authorization: Bearer KEY' or 'x-api-key: KEY'"),
                      [("www-authenticate", 'Bearer realm="shimmy"')])


def forbidden(details: str) -> ApiError:
    return ApiError(403, "forbidden", "Request refused", details)


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    api_key: str | None = None
    allowed_hosts: frozenset[str] | None = None  # None: any Host header is accepted
    cors_origins: frozenset[str] = frozenset()  # normalised origins, or {"*"}
    public_paths: frozenset[str] = frozenset({"/api/health"})  # answered without the key
    _key_digest: bytes = field(default=b"", repr=False)

    @classmethod
    def build(cls, host: str, *, api_key: str | None = None, extra_hosts: tuple[str, ...] = (),
              cors_origins: tuple[str, ...] = (),
              public_paths: tuple[str, ...] = ("/api/health",)) -> SecurityPolicy:
        """The policy for a server bound to ``host``: the Host allowlist is on for a
        loopback bind, or whenever ``extra_hosts`` names some; ``*`` turns it off."""
        allowed: frozenset[str] | None = None
        if ANY not in extra_hosts and (is_loopback(host) or extra_hosts):
            allowed = frozenset({*LOOPBACK_NAMES, _hostname(host),
                                 *(_hostname(name) for name in extra_hosts)})
        origins = frozenset(ANY if o == ANY else normalize_origin(o) for o in cors_origins)
        digest = _digest(api_key) if api_key else b""
        return cls(api_key or None, allowed, origins, frozenset(public_paths), digest)

    # --- the checks, in the order the server applies them ---

    def check(self, request: Request) -> ApiError | None:
        """Why ``request`` (its head: method, path, headers) must be refused, or None."""
        headers = request.headers
        if not self.host_allowed(headers.get("host")):
            return forbidden(f"Host '{headers.get('host')}' is not allowed; start shimmy with "
                             "--allowed-hosts to accept it")
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, headers.get("host")):
            return forbidden(f"Cross-origin requests from '{origin}' are not allowed; start "
                             "shimmy with --cors-origin to allow them")
        if self.api_key and not self.is_preflight(request) \
                and request.path not in self.public_paths and not self.authorized(headers):
            return unauthorized()
        return None

    def host_allowed(self, host: str | None) -> bool:
        if self.allowed_hosts is None or host is None:
            return True  # no Host at all: HTTP/1.0 from a script, never a browser
        name = _hostname(host)
        return name in self.allowed_hosts or _cannot_be_rebound(name)

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        if ANY in self.cors_origins or normalize_origin(origin) in self.cors_origins:
            return True
        return host is not None and _same_origin(origin, host)

    def authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").strip().partition(" ")
        candidates = [token.strip()] if scheme.lower() == "bearer" else []
        if "x-api-key" in headers:
            candidates.append(headers["x-api-key"].strip())
        # every candidate is compared, so timing does not tell which header was checked
        results = [hmac.compare_digest(_digest(c), self._key_digest) for c in candidates]
        return any(results)

    # --- CORS ---

    @staticmethod
    def is_preflight(request: Request) -> bool:
        headers = request.headers
        return (request.method == "OPTIONS" and "origin" in headers
                and "access-control-request-method" in headers)

    def preflight(self, request: Request) -> Response | None:
        """The answer to a CORS preflight (whose origin ``check`` accepted), else None."""
        if not self.is_preflight(request):
            return None
        headers = self.response_headers(request)
        headers.append(("access-control-allow-methods", PREFLIGHT_METHODS))
        asked = request.headers.get("access-control-request-headers", "")
        names = [name.strip() for name in asked.split(",") if _is_token(name.strip())]
        if names:
            headers.append(("access-control-allow-headers", ", ".join(names)))
        headers.append(("access-control-max-age", PREFLIGHT_MAX_AGE))
        headers.append(("vary", "access-control-request-method, access-control-request-headers"))
        return Response(204, b"", headers=headers)

    def response_headers(self, request: Request) -> list[tuple[str, str]]:
        """CORS headers for an allowed cross-origin request (never with credentials)."""
        origin = request.headers.get("origin")
        if origin is None or not self.cors_origins:
            return []
        if ANY in self.cors_origins:
            allow = ANY
        elif normalize_origin(origin) in self.cors_origins:
            allow = origin
        else:
            return []
        return [("access-control-allow-origin", allow), ("vary", "origin"),
                ("access-control-expose-headers", EXPOSED_HEADERS)]


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port or trailing slash."""
    text = origin.strip().lower().rstrip("/")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return text
    if not parts.scheme or not parts.hostname:
        return text  # "null" and other opaque origins stay as they are
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _same_origin(origin: str, host: str) -> bool:
    """Whether a browser on ``origin`` is talking to its own server (``Host``)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return False
    if parts.hostname is None:
        return False
    host_name, host_port = _split_host(host)
    return parts.hostname == host_name and port == (host_port or 80)


def _split_host(host: str) -> tuple[str, int | None]:
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    return name.rstrip("."), int(port) if port.isdigit() else None


def _hostname(host: str) -> str:
    return _split_host(host)[0]


def _cannot_be_rebound(name: str) -> bool:
    """Names a web page's DNS cannot point here: IP literals (a browser's origin is then
    that address itself), ``*.localhost`` (always loopback) and names without a dot, which
    come from the hosts file, the search domain or LAN name resolution, not public DNS."""
    if not name:
        return False
    if name.endswith(".localhost") or "." not in name and ":" not in name:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_token(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in text)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


# --- admission: how much work may wait ---


@dataclass(slots=True)
class Admission:
    """Refuses new generations while every slot is busy and ``max_queue`` are waiting."""

    max_queue: int = DEFAULT_MAX_QUEUE

    def check(self, model: Any, count: int = 1) -> None:
        """Refuse unless ``count`` more generations fit (a multi-prompt request's all)."""
        scheduler, engine = getattr(model, "scheduler", None), getattr(model, "engine", None)
        if scheduler is None or engine is None:
            return
        if not scheduler.alive:  # died since the pool handed it out: the next try reloads it
            raise RouteError(ApiError(503, "server_busy", "The model is being restarted",
                                      f"The scheduler of '{model.name}' stopped; retry"),
                             [("retry-after", "1")])
        outstanding = scheduler.n_active + scheduler.n_queued
        if outstanding + count > engine.n_slots + self.max_queue:
            raise server_busy(model.name, engine.n_slots, self.max_queue)


def server_busy(model: str, slots: int, queue: int) -> ApiError:
    error = ApiError(503, "server_busy", "The server is busy",
                     f"All {slots} slots of '{model}' are busy and {queue} requests are "
                     "waiting; retry later")
    return RouteError(error, [("retry-after", str(RETRY_AFTER_SECONDS))])


ADMISSION = Admission()


def check_capacity(model: Any, count: int = 1) -> None:
    """Raise the 503 ``server_busy`` error when ``model`` cannot take ``count`` more
    generations."""
    ADMISSION.check(model, count)
