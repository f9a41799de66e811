"""Defences: API key, Host allowlist, Origin and CORS, model names, request limits.

Two real servers: the session's Gemma server (the defaults: loopback, no key, no CORS)
and a tiny-model server started with ``--api-key``, ``--cors-origin`` and
``--allowed-hosts``. The HTTP front end's own limits (connections, 431, timeouts) run
in-process on port 0. Everything is loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anthropic
import openai
import pytest
from clients import WsClient, connect, request, request_json, wait_closed
from conftest import ShimmyProcess, isolated_env, wait_until
from tiny_model import write_spelling_model
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request as WsRequest
from wsproto.events import TextMessage

from shimmy.api.routes import build_router
from shimmy.api.state import AppState
from shimmy.cli import build_parser
from shimmy.config import Config, ConfigError
from shimmy.engine import pool as pool_module
from shimmy.engine.loaded import EngineSettings
from shimmy.engine.pool import ModelPool
from shimmy.errors import ApiError
from shimmy.http.router import Router
from shimmy.http.server import Server
from shimmy.http.types import MAX_JSON_DEPTH, Request, Response
from shimmy.models.registry import ModelRegistry
from shimmy.security import SecurityPolicy, is_loopback
from shimmy.serve import exposure_warning

KEY = "s3cret-key"
TEXT = "Key ok!"
APP_ORIGIN = "http://app.example:3000"


# --- helpers ---


def call(port: int, method: str, path: str, body: Any = None,
         **headers: str) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these extra headers (``host`` replaces the default)."""
    names = {name.replace("_", "-"): value for name, value in headers.items()}
    return request(port, method, path, body, timeout=30, headers=names)


def error_of(body: bytes) -> dict[str, Any]:
    return json.loads(body)["error"]


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, half-close, and read everything until the server closes."""
    with connect(port, timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return wait_closed(sock, timeout)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    home = tmp_path_factory.mktemp("home")
    models = tmp_path_factory.mktemp("models")
    write_spelling_model(models / "speller.gguf", TEXT)
    process = ShimmyProcess(
        ["--model-dirs", str(models), "--threads", "1", "--ctx", "256", "--api-key", KEY,
         "--cors-origin", APP_ORIGIN, "--allowed-hosts", "proxy.example,other.example"],
        isolated_env(home), home)
    yield process.port
    process.stop()


# --- API key ---


def test_health_needs_no_key_but_everything_else_does(keyed: int) -> None:
    status, _, _ = call(keyed, "GET", "/api/health")
    assert status == 200
    for method, path in [("GET", "/metrics"), ("GET", "/api/models"), ("GET", "/api/tags"),
                         ("POST", "/api/generate"), ("GET", "/nope")]:
        status, headers, body = call(keyed, method, path, b"{}" if method == "POST" else None)
        assert status == 401, (path, body)
        assert headers["www-authenticate"].startswith("Bearer")
        assert error_of(body) == {"code": "unauthorized", "message": "Missing or invalid API key",
                                  "details": error_of(body)["details"]}


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_either_header_carries_the_key(keyed: int, header: str) -> None:
    value = f"Bearer {KEY}" if header == "authorization" else KEY
    status, _, body = call(keyed, "POST", "/api/generate",
                           {"prompt": "", "max_tokens": 20, "temperature": 0},
                           **{header: value})
    assert status == 200, body
    assert json.loads(body)["choices"][0]["text"] == TEXT


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer wrong"}, {"authorization": KEY}, {"authorization": f"Basic {KEY}"},
    {"x-api-key": KEY + "x"}, {"x-api-key": KEY[:-1]}, {"authorization": "Bearer "},
])
def test_wrong_keys_are_refused(keyed: int, headers: dict[str, str]) -> None:
    status, _, _ = call(keyed, "GET", "/api/models", **headers)
    assert status == 401


def test_openai_client_gets_authentication_error(keyed: int) -> None:
    base = f"http://127.0.0.1:{keyed}/v1"
    wrong = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.body["type"] == "authentication_error"
    right = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
    assert [m.id for m in right.models.list()] == ["speller"]


def test_anthropic_client_gets_authentication_error(keyed: int) -> None:
    base = f"http://127.0.0.1:{keyed}"
    messages = [{"role": "user", "content": "hi"}]
    wrong = anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        wrong.messages.create(model="speller", max_tokens=5, messages=messages)
    assert caught.value.body["error"]["type"] == "authentication_error"
    right = anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0)
    reply = right.messages.create(model="speller", max_tokens=5, messages=messages)
    assert reply.usage.output_tokens >= 1


def test_websocket_upgrade_needs_the_key(keyed: int) -> None:
    ws = WSConnection(ConnectionType.CLIENT)
    data = ws.send(WsRequest(host="127.0.0.1", target="/ws/generate"))
    assert status_of(raw_exchange(keyed, data)) == 401
    ws = WSConnection(ConnectionType.CLIENT)
    data = ws.send(WsRequest(host="127.0.0.1", target="/ws/generate",
                             extra_headers=[(b"authorization", f"Bearer {KEY}".encode())]))
    assert raw_exchange(keyed, data).startswith(b"HTTP/1.1 101 ")


def test_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    monkeypatch.setenv("SHIMMY_API_KEY", "from-env")
    assert Config.from_args(parser.parse_args(["serve"])).api_key == "from-env"
    assert Config.from_args(parser.parse_args(["serve", "--api-key", "flag"])).api_key == "flag"
    monkeypatch.delenv("SHIMMY_API_KEY")
    assert Config.from_args(parser.parse_args(["serve"])).api_key is None
    with pytest.raises(ConfigError, match="empty"):
        Config.from_args(parser.parse_args(["serve", "--api-key", " "]))


def test_binding_beyond_loopback_without_a_key_warns() -> None:
    assert exposure_warning(Config(host="127.0.0.1")) is None
    assert exposure_warning(Config(host="::1")) is None
    assert exposure_warning(Config(host="localhost")) is None
    assert exposure_warning(Config(host="0.0.0.0", api_key="k")) is None
    for host in ("0.0.0.0", "::", "192.168.1.20", "myhost.lan"):
        warning = exposure_warning(Config(host=host))
        assert warning is not None and "without an API key" in warning
        assert "SHIMMY_API_KEY" in warning


def test_default_bind_is_loopback() -> None:
    config = Config.from_args(build_parser().parse_args(["serve"]))
    assert config.host == "127.0.0.1" and is_loopback(config.host)


# --- Host allowlist (DNS rebinding) ---


@pytest.mark.parametrize("host", ["evil.example", "evil.example:11435", "localhost.evil.example",
                                  "127.0.0.1.nip.io", "EVIL.EXAMPLE."])
def test_rebinding_host_is_refused_in_each_family_shape(port: int, host: str) -> None:
    status, _, body = call(port, "POST", "/api/generate", {"prompt": "x"}, host=host)
    assert status == 403
    assert error_of(body)["code"] == "forbidden"
    status, _, body = call(port, "GET", "/v1/models", host=host)
    assert status == 403 and error_of(body)["type"] == "permission_error"
    status, _, body = call(port, "POST", "/v1/messages", {}, host=host)
    assert status == 403 and json.loads(body)["type"] == "error"
    assert json.loads(body)["error"]["type"] == "permission_error"
    ws = WSConnection(ConnectionType.CLIENT)
    data = ws.send(WsRequest(host=host, target="/ws/generate"))
    assert status_of(raw_exchange(port, data)) == 403


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:80", "127.0.0.1", "[::1]:11435",
                                  "10.0.0.5", "app.localhost", "x"])
def test_local_hosts_are_accepted(port: int, host: str) -> None:
    status, _, _ = call(port, "GET", "/api/models", host=host)
    assert status == 200


def test_allowed_hosts_extend_the_list(keyed: int) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    for host in ("proxy.example", "other.example:8080"):
        assert call(keyed, "GET", "/api/models", host=host, **auth)[0] == 200
    assert call(keyed, "GET", "/api/models", host="third.example", **auth)[0] == 403


def test_policy_host_rules() -> None:
    assert SecurityPolicy.build("0.0.0.0").allowed_hosts is None  # reachable anyway
    assert SecurityPolicy.build("127.0.0.1", extra_hosts=("*",)).allowed_hosts is None
    exposed = SecurityPolicy.build("0.0.0.0", extra_hosts=("me.example",))
    assert exposed.host_allowed("me.example") and not exposed.host_allowed("evil.example")
    local = SecurityPolicy.build("localhost")
    assert local.host_allowed(None)  # no Host header: not a browser
    assert not local.host_allowed("")


# --- Origin and CORS ---


def test_cross_origin_requests_are_refused_by_default(port: int) -> None:
    status, headers, body = call(port, "POST", "/api/generate", {"prompt": "x"},
                                 origin="http://evil.example")
    assert status == 403 and "access-control-allow-origin" not in headers
    assert "--cors-origin" in error_of(body)["details"]
    preflight = {"origin": "http://evil.example", "access-control-request-method": "POST"}
    status, headers, _ = call(port, "OPTIONS", "/v1/chat/completions", **preflight)
    assert status == 403 and "access-control-allow-origin" not in headers
    ws = WSConnection(ConnectionType.CLIENT)
    data = ws.send(WsRequest(host="127.0.0.1", target="/ws/generate",
                             extra_headers=[(b"origin", b"http://evil.example")]))
    assert status_of(raw_exchange(port, data)) == 403  # cross-site WebSocket hijacking


def test_same_origin_page_is_served_without_cors_headers(port: int) -> None:
    status, headers, _ = call(port, "GET", "/api/models", origin=f"http://127.0.0.1:{port}")
    assert status == 200 and "access-control-allow-origin" not in headers


def test_cors_origin_allows_that_origin_only(keyed: int) -> None:
    preflight = {"origin": APP_ORIGIN, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    status, headers, body = call(keyed, "OPTIONS", "/v1/chat/completions", **preflight)
    assert status == 204 and body == b""  # preflights carry no key
    assert headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "authorization, content-type"
    assert "access-control-allow-credentials" not in headers
    status, headers, _ = call(keyed, "GET", "/v1/models", origin=APP_ORIGIN,
                              authorization=f"Bearer {KEY}")
    assert status == 200
    assert headers["access-control-allow-origin"] == APP_ORIGIN
    assert "origin" in headers["vary"]
    assert "access-control-allow-credentials" not in headers
    status, headers, _ = call(keyed, "OPTIONS", "/v1/chat/completions",
                              **{**preflight, "origin": "http://app.example:4000"})
    assert status == 403


def test_cors_wildcard_never_comes_with_credentials() -> None:
    policy = SecurityPolicy.build("127.0.0.1", cors_origins=("*",))
    request = Request("OPTIONS", "/v1/models", "", {
        "host": "localhost", "origin": "https://anything.example",
        "access-control-request-method": "GET"}, b"")
    assert policy.check(request) is None
    answer = policy.preflight(request)
    assert answer is not None and answer.status == 204
    headers = dict(answer.headers)
    assert headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in headers


def test_cors_origin_must_look_like_an_origin() -> None:
    parser = build_parser()
    with pytest.raises(ConfigError, match="--cors-origin"):
        Config.from_args(parser.parse_args(["serve", "--cors-origin", "app.example"]))
    config = Config.from_args(parser.parse_args(
        ["serve", "--cors-origin", "http://a.example", "--cors-origin", "*"]))
    assert config.cors_origins == ["http://a.example", "*"]


# --- model names never reach the filesystem ---

EVIL_NAMES = ["../../../../etc/passwd", "/etc/passwd", "..%2f..%2fetc%2fpasswd",
              "%2e%2e/%2e%2e/etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
              "http://evil.example/model.gguf", "file:///etc/passwd", "C:\\Windows\\win.ini",
              "~/.ssh/id_rsa", "speller/../../../etc/passwd", "..", ".", "speller\x00.gguf"]


def _model_requests(name: str) -> list[tuple[str, str, Any]]:
    messages = [{"role": "user", "content": "hi"}]
    return [
        ("POST", "/api/generate", {"model": name, "prompt": "x", "max_tokens": 1}),
        ("POST", "/v1/completions", {"model": name, "prompt": "x", "max_tokens": 1}),
        ("POST", "/v1/chat/completions", {"model": name, "messages": messages}),
        ("POST", "/v1/embeddings", {"model": name, "input": "x"}),
        ("POST", "/v1/messages", {"model": name, "max_tokens": 1, "messages": messages}),
        ("POST", "/api/show", {"model": name}),
        ("GET", "/v1/models/" + quote(name, safe=""), None),
    ]


@pytest.mark.parametrize("name", EVIL_NAMES, ids=range(len(EVIL_NAMES)))
def test_path_like_model_names_are_not_found(port: int, name: str, model_path: Path) -> None:
    for method, path, body in _model_requests(name):
        status, _, data = call(port, method, path, body)
        assert status == 404, (path, data)
        parsed = json.loads(data)
        if path.startswith("/v1/messages"):
            assert parsed["error"]["type"] == "not_found_error"
        else:
            assert parsed["error"]["code"] == "model_not_found", (path, parsed)


def test_the_models_own_path_is_not_a_name(port: int, model_path: Path) -> None:
    for method, path, body in _model_requests(str(model_path)):
        assert call(port, method, path, body)[0] == 404, path


def test_model_names_do_not_touch_the_filesystem(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: every route with every path-like name, while file opens, directory
    listings, stat calls and model loads are recorded: none may happen."""
    write_spelling_model(tmp_path / "speller.gguf", TEXT)
    registry = ModelRegistry.from_config(model_dirs=[tmp_path], env={})
    state = AppState(registry=registry, pool=ModelPool(registry, EngineSettings()))
    router = build_router(state)
    loads: list[Any] = []
    monkeypatch.setattr(pool_module, "LoadedModel", lambda *args: loads.append(args))

    def run_all(names: list[str]) -> list[int]:
        return asyncio.run(_statuses(router, [r for n in names for r in _model_requests(n)]))

    assert set(run_all(["warm-up-name"])) == {404}  # imports done before recording
    touched: list[str] = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: touched.append(f"stat {p}")
                        or real_stat(p, *a, **k))
    _record_file_events(touched)
    with _recording():
        statuses = run_all(EVIL_NAMES)
    assert set(statuses) == {404}
    assert touched == [] and loads == []


async def _statuses(router: Router, requests: list[tuple[str, str, Any]]) -> list[int]:
    statuses = []
    for method, path, body in requests:
        raw = json.dumps(body).encode() if body is not None else b""
        request = Request(method, path, "", {"content-type": "application/json"}, raw)
        try:
            handler, request.path_params = router.resolve(method, path)
            response = await handler(request)
            statuses.append(response.status)
        except ApiError as exc:
            statuses.append(exc.status)
    return statuses


_AUDIT = {"active": False, "sink": None}
_FILE_EVENTS = ("open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rename")


def _record_file_events(sink: list[str]) -> None:
    _AUDIT["sink"] = sink
    if not _AUDIT.get("installed"):
        import sys

        def hook(event: str, args: tuple) -> None:
            if _AUDIT["active"] and event in _FILE_EVENTS:
                _AUDIT["sink"].append(f"{event} {args[0]!r}")

        sys.addaudithook(hook)  # audit hooks cannot be removed: this one is switchable
        _AUDIT["installed"] = True


class _recording:
    def __enter__(self) -> None:
        _AUDIT["active"] = True

    def __exit__(self, *exc: object) -> None:
        _AUDIT["active"] = False


# --- limits on the real server ---


def test_oversized_body_is_413_before_it_is_read(port: int) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 17000000\r\n\r\n")
    response = raw_exchange(port, head)
    assert status_of(response) == 413
    assert b'"type": "invalid_request_error"' in response  # /v1: OpenAI's shape


@pytest.mark.parametrize("head", [
    b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n" + b"".join(
        b"X-Filler-%d: y\r\n" % i for i in range(101)) + b"\r\n",
    b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"y" * 17000 + b"\r\n\r\n",
], ids=["count", "size"])
def test_too_many_or_too_large_headers_are_431(port: int, head: bytes) -> None:
    response = raw_exchange(port, head)
    assert status_of(response) == 431
    assert b"Request header fields too large" in response


def test_a_head_that_never_ends_is_431(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n")
        for _ in range(20):
            sock.sendall(b"X-More: " + b"z" * 1000 + b"\r\n")  # never the blank line
        assert status_of(wait_closed(sock, 5)) == 431


def test_json_nested_too_deep_is_400(port: int) -> None:
    deep: Any = "x"
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    status, body = request_json(port, "POST", "/api/generate", {"prompt": "x", "extra": deep})
    assert status == 400 and "levels deep" in body["error"]["details"]
    status, _, data = call(port, "POST", "/v1/chat/completions", b"[" * 100_000)
    assert status == 400 and error_of(data)["type"] == "invalid_request_error"
    client = WsClient(port, "/ws/generate")
    client.send(TextMessage(data="{" * 50_000))
    frame = json.loads(client.receive_text())
    assert frame["error"]["code"] == "invalid_request"
    client.send(TextMessage(data=json.dumps({"prompt": "x", "extra": deep})))
    assert "levels deep" in json.loads(client.receive_text())["error"]["details"]
    client.close()


@pytest.mark.parametrize(("fields", "words"), [
    ({"max_tokens": 0}, "between"), ({"max_tokens": -5}, "between"),
    ({"max_tokens": 10**12}, "between"), ({"max_tokens": "10"}, "integer"),
    ({"max_tokens": 8000, "prompt": "word " * 400}, "context"),
    ({"prompt": "x" * 100_000, "max_tokens": 1}, "context"),
])
def test_prompt_and_max_tokens_bounds(port: int, fields: dict, words: str) -> None:
    status, body = request_json(port, "POST", "/api/generate", {"prompt": "x", **fields})
    assert status == 400 and words in body["error"]["details"], body


def test_websocket_message_over_the_limit_closes_1009(port: int) -> None:
    client = WsClient(port, "/ws/generate")
    client.send(TextMessage(data="x" * (1024 * 1024 + 1)))
    client.expect_close(1009)
    client.close()


# --- the front end's own limits, in-process ---


async def _hello(request: Request) -> Response:
    return Response.json({"hello": True})


class LocalServer:
    """A ``Server`` with ``options`` on port 0, on its own loop in a daemon thread."""

    def __init__(self, **options: Any) -> None:
        router = Router()
        router.add("GET", "/hello", _hello)
        router.add("POST", "/hello", _hello)
        self.loop = asyncio.new_event_loop()
        self.server = Server(router, "127.0.0.1", 0, **options)
        self.loop.run_until_complete(self.server.start())
        self.port = self.server.port
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def local_server(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    server = LocalServer(**getattr(request, "param", {}))
    yield server
    server.close()


HELLO = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.mark.parametrize("local_server", [{"max_connections": 4}], indirect=True)
def test_connections_over_the_limit_get_503(local_server: LocalServer) -> None:
    held = [connect(local_server.port) for _ in range(4)]
    try:
        assert wait_until(lambda: local_server.server.connection_count == 4)
        response = raw_exchange(local_server.port, HELLO)
        assert status_of(response) == 503
        assert b"retry-after: " in response.lower()
        held.pop().close()
        assert wait_until(lambda: local_server.server.connection_count < 4)
        assert status_of(raw_exchange(local_server.port, HELLO)) == 200
    finally:
        for sock in held:
            sock.close()


def drip_until_closed(port: int, first: bytes, interval: float = 0.1,
                      limit: float = 5.0) -> float:
    """Send ``first``, then a byte every ``interval``; seconds until the server hangs up."""
    with connect(port) as sock:
        started = time.monotonic()
        sock.sendall(first)
        sock.settimeout(interval)
        while time.monotonic() - started < limit:
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                pass
            except OSError:
                return time.monotonic() - started
            try:
                sock.sendall(b"X")
            except OSError:
                return time.monotonic() - started
    raise AssertionError(f"the server kept the connection open for {limit} s")


@pytest.mark.parametrize("local_server", [{"header_timeout": 0.5}], indirect=True)
def test_a_slowly_dripping_head_is_dropped(local_server: LocalServer) -> None:
    # a byte every 0.1 s does not keep a head alive past the header timeout
    elapsed = drip_until_closed(local_server.port, b"GET /hello HTTP/1.1\r\n")
    assert 0.4 < elapsed < 1.5


@pytest.mark.parametrize("local_server", [{"header_timeout": 0.4, "body_timeout": 1.0}],
                         indirect=True)
def test_a_slowly_dripping_body_is_dropped(local_server: LocalServer) -> None:
    # each byte comes before the pause limit (0.4 s); the whole body is still too slow
    head = b"POST /hello HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n"
    elapsed = drip_until_closed(local_server.port, head)
    assert 0.9 < elapsed < 2.0


@pytest.mark.parametrize("local_server", [{"keepalive_timeout": 0.3}], indirect=True)
def test_an_idle_keep_alive_connection_is_closed(local_server: LocalServer) -> None:
    with connect(local_server.port) as sock:
        sock.sendall(HELLO)
        started = time.monotonic()
        data = wait_closed(sock, 3)
        assert data.startswith(b"HTTP/1.1 200") and time.monotonic() - started < 1.5


def test_config_checks_the_limits() -> None:
    parser = build_parser()
    for args, words in [(["--max-queue", "-1"], "--max-queue"),
                        (["--max-connections", "0"], "--max-connections"),
                        (["--header-timeout", "0"], "--header-timeout"),
                        (["--idle-timeout", "-1"], "--idle-timeout"),
                        (["--shutdown-grace", "-1"], "--shutdown-grace")]:
        with pytest.raises(ConfigError, match=words):
            Config.from_args(parser.parse_args(["serve", *args]))
    config = Config.from_args(parser.parse_args(["serve", "--max-queue", "3"]))
    assert config.max_queue == 3 and isinstance(config, Config)
    assert isinstance(parser.parse_args(["serve"]), argparse.Namespace)
