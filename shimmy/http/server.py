"""HTTP/1.1 server: one asyncio protocol per connection over h11's state machine."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from time import time

import h11

from shimmy.errors import ApiError, invalid_request, server_error
from shimmy.http.connections import ConnectionSet, WriteFlow
from shimmy.http.router import RouteError, Router
from shimmy.http.types import (
    Request,
    RequestPolicy,
    Response,
    ServerObserver,
    StreamResponse,
    WebSocketHandler,
)
from shimmy.logs import RequestRecord, current_request, log_request, request_id

logger = logging.getLogger("shimmy.http")

KIB = 1024
MIB = 1024 * KIB
COALESCE_BYTES = 64 * 1024  # what a stream may gather while its client is not reading
LINGER_SECONDS = 1.0  # after an error response, how long to drain the client's unread bytes
SHUTDOWN_GRACE_SECONDS = 5.0  # how long shutdown waits for cancelled handlers to unwind
DRAIN_POLL_SECONDS = 0.05
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away first
RETRY_AFTER_SECONDS = 2


@dataclass(frozen=True, slots=True)
class ServerConfig:
    router: Router
    max_body_bytes: int
    keepalive_timeout: float
    header_timeout: float
    max_ws_message_bytes: int
    body_timeout: float = 120.0
    max_connections: int = 512
    max_header_bytes: int = 16 * KIB
    max_header_count: int = 100
    policy: RequestPolicy | None = None
    observer: ServerObserver | None = None


class Server:
    """Serves ``router`` on ``host:port``; ``port=0`` picks a free port (see ``port``).

    Limits: bodies over ``max_body_bytes`` get 413; request heads over ``max_header_bytes``
    or ``max_header_count`` fields get 431; a head must arrive within ``header_timeout``
    of its first byte and a body within ``body_timeout`` (and never pause longer than
    ``header_timeout``), or the connection is dropped; an idle keep-alive connection is
    closed after ``keepalive_timeout``; beyond ``max_connections`` a new connection gets
    503 and is closed. ``policy`` vets each request's head before its body is read.
    """

    def __init__(
        self,
        router: Router,
        host: str = "127.0.0.1",
        port: int = 11435,
        *,
        max_body_bytes: int = 16 * MIB,
        keepalive_timeout: float = 5.0,
        header_timeout: float = 30.0,
        max_ws_message_bytes: int = 1 * MIB,
        body_timeout: float = 120.0,
        max_connections: int = 512,
        max_header_bytes: int = 16 * KIB,
        max_header_count: int = 100,
        policy: RequestPolicy | None = None,
        observer: ServerObserver | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._config = ServerConfig(
            router, max_body_bytes, keepalive_timeout, header_timeout, max_ws_message_bytes,
            body_timeout, max_connections, max_header_bytes, max_header_count, policy, observer,
        )
        self._server: asyncio.Server | None = None
        on_change = observer.connections_changed if observer is not None else None
        self._connections = ConnectionSet(on_change)
        self._stopped: asyncio.Event | None = None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        """The bound port once started (the real one when asked for port 0)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._requested_port

    async def start(self) -> None:
        """Bind and start accepting; a port in use raises ``OSError`` (``EADDRINUSE``)."""
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self._config, self._connections),
            self.host,
            self._requested_port,
        )

    async def serve_forever(self) -> None:
        """Serve until ``shutdown()``; if cancelled, shuts down before re-raising."""
        if self._server is None:
            await self.start()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await self.shutdown()
            raise

    async def shutdown(self, grace: float = 0.0) -> None:
        """Stop listening; give requests in progress up to ``grace`` seconds to finish
        (idle connections close at once), then close every connection and cancel the
        handlers still running."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        if grace > 0:
            await self._drain(grace)
        tasks = [task for conn in self._connections if (task := conn.shutdown())]
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_SECONDS)
        with contextlib.suppress(TimeoutError):
            # From Python 3.12 this waits for the connections' buffers to flush.
            await asyncio.wait_for(server.wait_closed(), SHUTDOWN_GRACE_SECONDS)
        if self._stopped is not None:
            self._stopped.set()

    async def _drain(self, grace: float) -> None:
        for connection in self._connections:
            connection.drain()
        deadline = asyncio.get_running_loop().time() + grace
        while self._connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(DRAIN_POLL_SECONDS)


class _Phase(enum.Enum):
    IDLE = "idle"  # between requests, nothing of the next one received yet
    HEAD = "head"  # receiving the request line and headers
    BODY = "body"  # receiving the request body
    HANDLING = "handling"  # the handler runs or the response is being sent
    CLOSING = "closing"  # an error response went out; waiting to close


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: keep-alive, pipelining (one request at a time, in order),
    request bodies up to a limit, timeouts, write backpressure, and the WebSocket upgrade.

    Reading continues while a handler runs so that a client hanging up is noticed at once
    (its handler is cancelled); only when it pipelines the next request do we stop reading
    until the current response is done.
    """

    def __init__(self, config: ServerConfig, connections: ConnectionSet) -> None:
        self._config = config
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self._flow = WriteFlow()
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._phase = _Phase.IDLE
        self._timer: asyncio.TimerHandle | None = None
        self._head: h11.Request | None = None
        self._request: Request | None = None
        self._record: RequestRecord | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_deadline = 0.0
        self._websocket: WebSocketHandler | None = None
        self._task: asyncio.Task[None] | None = None
        self._draining = False

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        if len(self._connections) >= self._config.max_connections:
            self._refuse_connection()
            return
        self._connections.add(self)
        self._set_timer(self._config.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._phase is _Phase.CLOSING:
            return  # draining what the client still sends after our error response
        self._conn.receive_data(data)
        if self._phase is _Phase.HANDLING:
            # A pipelined request: h11 keeps it buffered until this response is done.
            self._transport_or_fail().pause_reading()
            return
        if self._phase is _Phase.IDLE:
            self._phase = _Phase.HEAD
            self._set_timer(self._config.header_timeout)
        elif self._phase is _Phase.BODY:
            # a body must keep arriving, and arrive whole before its deadline
            left = self._body_deadline - self._loop.time()
            self._set_timer(min(self._config.header_timeout, max(left, 0.0)))
        self._process_events()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._cancel_timer()
        self._flow.resume()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client is gone: stop the work done for it
        elif self._record is not None:
            self._finish_record(self._record, CLIENT_CLOSED, "client closed")

    def pause_writing(self) -> None:
        self._flow.pause()

    def resume_writing(self) -> None:
        self._flow.resume()

    def drain(self) -> None:
        self._draining = True
        if self._phase is _Phase.IDLE and self._transport is not None:
            self._transport.close()

    def shutdown(self) -> asyncio.Task[None] | None:
        task = self._task if self._task is not None and not self._task.done() else None
        if task is not None:
            task.cancel()
        if self._transport is not None:
            self._transport.close()
        return task

    # --- reading requests ---

    def _process_events(self) -> None:
        while self._phase in (_Phase.IDLE, _Phase.HEAD, _Phase.BODY):
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._reject_malformed(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_request_head(event)
            elif isinstance(event, h11.Data):
                self._on_body_data(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._on_request_complete()
            elif isinstance(event, h11.ConnectionClosed):
                self._transport_or_fail().close()
                return

    def _on_request_head(self, head: h11.Request) -> None:
        self._head = head
        self._body = []
        self._body_size = 0
        self._phase = _Phase.BODY
        self._body_deadline = self._loop.time() + self._config.body_timeout
        self._set_timer(self._config.header_timeout)
        self._request = request = self._build_request(head)
        self._record = self._start_record(request)
        if (error := self._head_problem(head, request)) is not None:
            self._reject(error)
            return
        self._websocket = self._websocket_target(head)
        if self._conn.they_are_waiting_for_100_continue:
            self._write(self._send(h11.InformationalResponse(status_code=100, headers=[])))

    def _head_problem(self, head: h11.Request, request: Request) -> ApiError | None:
        """Why this request is refused before its body is read, if it is."""
        config = self._config
        size = len(head.target) + sum(len(name) + len(value) for name, value in head.headers)
        if len(head.headers) > config.max_header_count or size > config.max_header_bytes:
            return _headers_too_large(config.max_header_bytes, config.max_header_count)
        declared = _content_length(head)
        if declared is not None and declared > config.max_body_bytes:
            return self._body_too_large()
        return config.policy.check(request) if config.policy is not None else None

    def _on_body_data(self, data: bytes) -> None:
        self._body_size += len(data)
        if self._body_size > self._config.max_body_bytes:
            self._reject(self._body_too_large())
            return
        self._body.append(data)

    def _on_request_complete(self) -> None:
        assert self._head is not None and self._request is not None
        self._cancel_timer()
        self._phase = _Phase.HANDLING
        request = self._request
        request.body = b"".join(self._body)
        self._body = []
        policy = self._config.policy
        if policy is not None and (answer := policy.preflight(request)) is not None:
            self._task = self._loop.create_task(self._respond_now(request, answer))
            return
        if self._websocket is not None:
            problem = _handshake_problem(self._head)
            if problem is None:
                self._switch_to_websocket(self._websocket, self._head)
                return
            error = invalid_request(problem)
            response = self._error_response(error, request.path)
            self._task = self._loop.create_task(self._respond_now(request, response))
            return
        self._task = self._loop.create_task(self._handle(request))

    def _build_request(self, head: h11.Request) -> Request:
        path, _, query = head.target.decode("latin-1").partition("?")
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
        return Request(head.method.decode("ascii"), path, query, headers, b"", self._client,
                       id=request_id(headers.get("x-request-id")))

    def _websocket_target(self, head: h11.Request) -> WebSocketHandler | None:
        upgrade = _header(head, b"upgrade")
        if upgrade is None or b"websocket" not in upgrade.lower():
            return None
        path = head.target.decode("latin-1").partition("?")[0]
        return self._config.router.websocket_handler(path)

    def _switch_to_websocket(self, handler: WebSocketHandler, head: h11.Request) -> None:
        trailing, _ = self._conn.trailing_data
        transport = self._transport_or_fail()
        self._connections.discard(self)
        path = head.target.decode("latin-1").partition("?")[0]
        from shimmy.http.websocket import ServerWebSocket  # wsproto loads on first use

        websocket = ServerWebSocket(
            handler,
            max_message_bytes=self._config.max_ws_message_bytes,
            flow=self._flow,
            connections=self._connections,
            client=self._client,
            path=path,
            route=self._config.router.route_for(path) or "",
            observer=self._config.observer,
        )
        if self._record is not None:
            self._finish_record(self._record, 101)
        websocket.start(transport, _handshake_bytes(head), trailing)
        if self._draining:
            websocket.drain()

    # --- handling and responding ---

    async def _handle(self, request: Request) -> None:
        record = self._record
        current_request.set(record)
        status, note = CLIENT_CLOSED, "cancelled"
        try:
            response = await self._call_handler(request)
            status, note = response.status, ""
            head_only = request.method == "HEAD"
            if isinstance(response, StreamResponse):
                complete = await self._send_stream(response, request, head_only)
                note = "" if complete else "stream broke off"
            else:
                self._send_response(response, request, head_only)
                complete = True
        except Exception:  # e.g. h11 refusing a handler's malformed headers
            logger.exception("Failed to send the response to %s %s", request.method, request.path)
            note = "response failed"
            self._task = None
            self._transport_or_fail().close()
            return
        finally:
            if record is not None:
                self._finish_record(record, status, note)
        self._task = None
        if complete:
            self._finish_cycle()
        else:
            self._transport_or_fail().close()

    async def _respond_now(self, request: Request, response: Response) -> None:
        self._send_response(response, request, request.method == "HEAD")
        if self._record is not None:
            self._finish_record(self._record, response.status)
        self._task = None
        self._finish_cycle()

    async def _call_handler(self, request: Request) -> Response | StreamResponse:
        try:
            handler, request.path_params = self._config.router.resolve(
                request.method, request.path
            )
            return await handler(request)
        except ApiError as exc:
            return self._error_response(exc, request.path)
        except Exception as exc:
            logger.exception("Unhandled error in %s %s", request.method, request.path)
            details = f"Unexpected {type(exc).__name__} while handling the request"
            return self._error_response(server_error(details), request.path)

    def _error_response(self, error: ApiError, path: str) -> Response:
        body = self._config.router.error_body(path, error)
        return _error_response(error, body)

    def _extra_headers(self, request: Request | None) -> list[tuple[bytes, bytes]]:
        """Headers every response gets: the request id, CORS, and whether we will close."""
        headers: list[tuple[str, str]] = []
        if request is not None:
            headers.append(("x-request-id", request.id))
            if self._config.policy is not None:
                headers.extend(self._config.policy.response_headers(request))
        if self._draining:
            headers.append(("connection", "close"))
        return _encode_headers(headers)

    def _send_response(self, response: Response, request: Request | None,
                       head_only: bool) -> None:
        body = response.body
        headers = _base_headers()
        if _may_have_body(response.status):
            headers.append((b"content-type", response.content_type.encode("latin-1")))
            headers.append((b"content-length", str(len(body)).encode()))
        headers.extend(_encode_headers(response.headers))
        headers.extend(self._extra_headers(request))
        data = self._send(_response_head(response.status, headers))
        if body and not head_only and _may_have_body(response.status):
            data += self._send(h11.Data(data=body))
        data += self._send(h11.EndOfMessage())
        self._write(data)

    async def _send_stream(self, response: StreamResponse, request: Request,
                           head_only: bool) -> bool:
        """Send ``response`` chunk by chunk; ``False`` if it broke off (then close)."""
        chunks = response.chunks
        try:
            headers = _base_headers()
            headers.append((b"content-type", response.content_type.encode("latin-1")))
            extra = _encode_headers(response.headers)
            event_stream = response.content_type.startswith("text/event-stream")
            if event_stream and not any(name == b"cache-control" for name, _ in extra):
                headers.append((b"cache-control", b"no-cache"))
            headers.extend(extra)
            headers.extend(self._extra_headers(request))
            # No Content-Length: h11 picks chunked encoding (close-delimited for HTTP/1.0).
            self._write(self._send(_response_head(response.status, headers)))
            if not head_only:
                await self._write_chunks(chunks)
            self._write(self._send(h11.EndOfMessage()))
            return True
        except Exception:
            logger.exception("Stream failed after the response started")
            return False
        finally:
            await _aclose(chunks)

    async def _write_chunks(self, chunks: AsyncIterator[bytes]) -> None:
        """Each chunk as it comes; while the client reads slower than they come (the
        transport has paused writing), they gather and leave as one write once it can
        take more, instead of one write and one chunk header each."""
        held: list[bytes] = []
        size = 0
        async for chunk in chunks:
            if chunk:
                held.append(chunk)
                size += len(chunk)
            if not held or (self._flow.paused and size < COALESCE_BYTES):
                continue
            await self._flow.drain()  # past the cap, the stream waits for the client
            self._write(self._send(h11.Data(data=b"".join(held))))
            held.clear()
            size = 0
        if held:
            await self._flow.drain()
            self._write(self._send(h11.Data(data=b"".join(held))))

    def _finish_cycle(self) -> None:
        """After a response: close, or get ready for (or start on) the next request."""
        transport = self._transport_or_fail()
        if transport.is_closing():
            return
        if self._draining or self._conn.our_state is not h11.DONE \
                or self._conn.their_state is not h11.DONE:
            transport.close()  # MUST_CLOSE (Connection: close, HTTP/1.0, shutting down...)
            return
        self._conn.start_next_cycle()
        self._head = None
        self._request = None
        self._websocket = None
        self._phase = _Phase.IDLE
        transport.resume_reading()
        if self._conn.trailing_data[0]:
            self._phase = _Phase.HEAD
            self._set_timer(self._config.header_timeout)
            self._process_events()
        else:
            self._set_timer(self._config.keepalive_timeout)

    # --- the request log and metrics ---

    def _start_record(self, request: Request) -> RequestRecord:
        record = RequestRecord(request.id, request.method, request.path, self._client)
        if self._config.observer is not None:
            self._config.observer.request_started(record)
        return record

    def _finish_record(self, record: RequestRecord, status: int, note: str = "") -> None:
        if record is self._record:
            self._record = None
        if not record.finish(status, note):
            return
        record.route = self._config.router.route_for(record.path) or ""
        if self._config.observer is not None:
            self._config.observer.request_finished(record)
        log_request(record)

    # --- errors before the handler ---

    def _body_too_large(self) -> ApiError:
        limit = self._config.max_body_bytes
        return ApiError(
            413,
            "invalid_request",
            "Request body too large",
            f"The request body exceeds the limit of {limit} bytes",
        )

    def _reject_malformed(self, exc: h11.RemoteProtocolError) -> None:
        status = exc.error_status_hint
        if status == 431:
            config = self._config
            self._reject(_headers_too_large(config.max_header_bytes, config.max_header_count))
            return
        self._reject(ApiError(status, "invalid_request", "Malformed HTTP request", str(exc)))

    def _reject(self, error: ApiError) -> None:
        """Answer ``error`` (if a response can still start) and close the connection."""
        self._phase = _Phase.CLOSING
        transport = self._transport_or_fail()
        request = self._request
        if self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            response = self._error_response(error, request.path if request else "")
            response.headers.append(("connection", "close"))
            head_only = request is not None and request.method == "HEAD"
            self._send_response(response, request, head_only)
        record = self._record or self._start_record(Request("", "", "", {}, b"", self._client,
                                                            id=request_id()))
        self._finish_record(record, error.status, f"rejected: {_rejection_reason(error)}")
        # Closing with unread bytes would reset the connection and could destroy the
        # response in flight: half-close, and drop what still comes for a moment.
        if transport.can_write_eof():
            transport.write_eof()
        self._set_timer(LINGER_SECONDS)

    def _refuse_connection(self) -> None:
        """Over ``max_connections``: a canned 503 (no request has been read), then close."""
        self._phase = _Phase.CLOSING
        transport = self._transport_or_fail()
        error = ApiError(503, "server_busy", "Too many connections",
                         f"The server already has {self._config.max_connections} open "
                         "connections; retry later")
        body = json.dumps(error.body()).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nserver: shimmy\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                f"retry-after: {RETRY_AFTER_SECONDS}\r\nconnection: close\r\n\r\n")
        transport.write(head.encode() + body)
        if self._config.observer is not None:
            self._config.observer.rejected("connections")
        if transport.can_write_eof():
            transport.write_eof()
        self._set_timer(LINGER_SECONDS)

    def _on_timeout(self) -> None:
        if self._phase in (_Phase.HEAD, _Phase.BODY) and self._record is not None:
            self._finish_record(self._record, 408, "rejected: timeout")
        self._transport_or_fail().close()

    # --- plumbing ---

    def _send(self, event: h11.Event) -> bytes:
        return self._conn.send(event) or b""

    def _write(self, data: bytes) -> None:
        transport = self._transport_or_fail()
        if data and not transport.is_closing():
            transport.write(data)

    def _transport_or_fail(self) -> asyncio.Transport:
        assert self._transport is not None, "used before connection_made"
        return self._transport

    def _set_timer(self, delay: float) -> None:
        """(Re)start the single timeout that closes this connection."""
        self._cancel_timer()
        self._timer = self._loop.call_later(delay, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# --- module helpers ---

_date_cache: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    global _date_cache
    now = int(time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def _base_headers() -> list[tuple[bytes, bytes]]:
    return [(b"server", b"shimmy"), (b"date", _date_header())]


def _encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _response_head(status: int, headers: list[tuple[bytes, bytes]]) -> h11.Response:
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return h11.Response(status_code=status, headers=headers, reason=reason)


def _may_have_body(status: int) -> bool:
    return status >= 200 and status not in (204, 304)


def _error_response(error: ApiError, body: dict | None = None) -> Response:
    body = json.dumps(error.body() if body is None else body, ensure_ascii=False).encode()
    headers = list(error.headers) if isinstance(error, RouteError) else []
    return Response(error.status, body, "application/json", headers)


def _headers_too_large(max_bytes: int, max_count: int) -> ApiError:
    return ApiError(431, "invalid_request", "Request header fields too large",
                    f"The request head exceeds {max_bytes} bytes or {max_count} header fields")


def _rejection_reason(error: ApiError) -> str:
    reasons = {401: "unauthorized", 403: "forbidden", 413: "body_too_large",
               431: "headers_too_large"}
    return reasons.get(error.status, "malformed")


def _header(head: h11.Request, name: bytes) -> bytes | None:
    for header_name, value in head.headers:
        if header_name == name:
            return value
    return None


def _content_length(head: h11.Request) -> int | None:
    value = _header(head, b"content-length")
    return int(value) if value is not None else None  # h11 has validated it


def _handshake_problem(head: h11.Request) -> str | None:
    """Why this WebSocket upgrade request is unacceptable, or None if it is fine."""
    connection = (_header(head, b"connection") or b"").lower()
    if head.method != b"GET":
        return "A WebSocket upgrade must use GET"
    if b"upgrade" not in [token.strip() for token in connection.split(b",")]:
        return "A WebSocket upgrade needs 'Connection: Upgrade'"
    if _header(head, b"sec-websocket-version") != b"13":
        return "Only WebSocket version 13 is supported ('Sec-WebSocket-Version: 13')"
    if not _header(head, b"sec-websocket-key"):
        return "A WebSocket upgrade needs a 'Sec-WebSocket-Key' header"
    return None


def _handshake_bytes(head: h11.Request) -> bytes:
    """The upgrade request's head again, for wsproto's handshake parser."""
    lines = [b"GET " + head.target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in head.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.exception("Closing a response stream failed")
