"""The HTTP/1.1 + WebSocket front end, exercised over real sockets.

The server runs on its own event loop in a background thread (port 0); the tests are
plain blocking clients: http.client, raw sockets, and wsproto for WebSockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO

import pytest
from clients import WsClient, connect, wait_closed
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.events import Request as WsRequest
from wsproto.frame_protocol import FrameProtocol

from shimmy.errors import ApiError
from shimmy.http.router import Router
from shimmy.http.server import Server
from shimmy.http.sse import SSE_DONE, SSE_PING, TEXT_SLOT, TextEvents, sse_data
from shimmy.http.types import Request, Response, StreamResponse, WebSocket

MAX_BODY = 1024
MAX_WS = 1024
CHUNK_64K = b"x" * 65536

# Set by handlers, waited on by tests (keyed per test, since the server is shared).
signals: defaultdict[str, threading.Event] = defaultdict(threading.Event)
counters: defaultdict[str, int] = defaultdict(int)


# --- handlers ---


async def hello(request: Request) -> Response:
    return Response.json({"hello": "wörld"})


async def whoami(request: Request) -> Response:
    return Response.json({"client": request.client})


async def model(request: Request) -> Response:
    return Response.json({"id": request.path_params["id"], "query": request.query})


async def echo(request: Request) -> Response:
    return Response.json({"size": len(request.body), "body": request.body.decode()})


async def sleep(request: Request) -> Response:
    await asyncio.sleep(float(request.query) / 1000)
    return Response.json({"slept": request.query})


async def api_error(request: Request) -> Response:
    raise ApiError(409, "busy", "Model is busy", "try later")


async def boom(request: Request) -> Response:
    raise RuntimeError("kaboom")


async def gated_stream(request: Request) -> StreamResponse:
    gate = signals[request.query]

    async def chunks() -> AsyncIterator[bytes]:
        yield sse_data({"n": 0})
        while not gate.is_set():  # the client lets the rest come once it has chunk 0
            await asyncio.sleep(0.005)
        yield SSE_PING
        yield sse_data({"n": 1, "text": "ünï"})
        yield SSE_DONE

    return StreamResponse(chunks())


async def endless_stream(request: Request) -> StreamResponse:
    key = request.query

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                yield sse_data({"tick": True})
                await asyncio.sleep(0.01)
        finally:
            signals[key].set()

    return StreamResponse(chunks())


async def flood(request: Request) -> StreamResponse:
    key = request.query

    async def chunks() -> AsyncIterator[bytes]:
        try:
            for _ in range(1000):
                counters[key] += 1
                yield CHUNK_64K
        finally:
            signals[key].set()

    return StreamResponse(chunks(), content_type="application/octet-stream")


TRICKLE_CHUNKS = 5000  # of 2 kB: more than the kernel buffers of both ends


async def trickle(request: Request) -> StreamResponse:
    """Small chunks, one per loop turn: faster than a client that is not reading."""
    async def chunks() -> AsyncIterator[bytes]:
        for index in range(TRICKLE_CHUNKS):
            await asyncio.sleep(0)
            yield b"%05d:" % index + b"x" * 2000

    return StreamResponse(chunks(), content_type="application/octet-stream")


async def failing_stream(request: Request) -> StreamResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        raise RuntimeError("engine died")

    return StreamResponse(chunks())


async def ws_echo(ws: WebSocket) -> None:
    while (text := await ws.receive_text()) is not None:
        await ws.send_text("echo:" + text)


async def ws_busy(ws: WebSocket) -> None:
    await ws.receive_text()
    try:
        await asyncio.sleep(30)  # stands for engine work
    except asyncio.CancelledError:
        signals["ws-busy-cancelled"].set()
        raise


async def ws_wait(ws: WebSocket) -> None:
    if await ws.receive_text() is None and ws.closed:
        signals["ws-wait-none"].set()


async def ws_goodbye(ws: WebSocket) -> None:
    await ws.send_text("bye")
    await ws.close(4000, "done")


def build_router() -> Router:
    router = Router()
    router.add("GET", "/v1/hello", hello)
    router.add("GET", "/whoami", whoami)
    router.add("GET", "/v1/models/{id}", model)
    router.add("DELETE", "/v1/models/{id}", model)
    router.add("POST", "/echo", echo)
    router.add("GET", "/sleep", sleep)
    router.add("GET", "/api-error", api_error)
    router.add("GET", "/boom", boom)
    router.add("GET", "/stream", gated_stream)
    router.add("GET", "/endless", endless_stream)
    router.add("GET", "/flood", flood)
    router.add("GET", "/trickle", trickle)
    router.add("GET", "/failing-stream", failing_stream)
    router.add_websocket("/ws/echo", ws_echo)
    router.add_websocket("/ws/busy", ws_busy)
    router.add_websocket("/ws/wait", ws_wait)
    router.add_websocket("/ws/goodbye", ws_goodbye)
    return router


# --- harness ---


class ServerThread:
    """A Server on port 0, on its own loop in a daemon thread."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = Server(build_router(), "127.0.0.1", 0, **options)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)
        self.port = self.server.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self._ready.set()
        self.loop.run_until_complete(self.server.serve_forever())

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(5)
        self._thread.join(5)
        assert not self._thread.is_alive(), "serve_forever did not return after shutdown"
        self.loop.close()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ServerThread(max_body_bytes=MAX_BODY, max_ws_message_bytes=MAX_WS)
    yield server.port
    server.stop()


def request_bytes(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_head(reader: BinaryIO) -> tuple[int, dict[str, str]]:
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def read_chunk(reader: BinaryIO) -> bytes:
    size = int(reader.readline().strip(), 16)
    data = reader.read(size)
    assert reader.read(2) == b"\r\n"
    return data


def read_response(reader: BinaryIO, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    status, headers = read_head(reader)
    if head_only:
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while chunk := read_chunk(reader):
            body += chunk
        assert reader.readline() == b"\r\n"  # no trailers
        return status, headers, body
    return status, headers, reader.read(int(headers.get("content-length", "0")))


def http_request(
    port: int, method: str, path: str, body: bytes | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    conn.request(method, path, body=body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def assert_error(body: bytes, code: str) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    return error


# --- HTTP ---


def test_get_json_with_standard_headers(port: int) -> None:
    response, body = http_request(port, "GET", "/v1/hello")
    assert response.status == 200
    assert json.loads(body) == {"hello": "wörld"}
    assert response.getheader("content-type") == "application/json"
    assert response.getheader("content-length") == str(len(body))
    assert response.getheader("server") == "shimmy"
    assert response.getheader("date", "").endswith("GMT")


def test_path_params_are_percent_decoded_within_one_segment(port: int) -> None:
    response, body = http_request(port, "GET", "/v1/models/org%2Fname%20v2?x=1")
    assert response.status == 200
    assert json.loads(body) == {"id": "org/name v2", "query": "x=1"}
    response, _ = http_request(port, "GET", "/v1/models/a/b")
    assert response.status == 404


def test_keep_alive_serves_two_requests_on_one_socket(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    conn.request("GET", "/whoami")
    first = json.loads(conn.getresponse().read())
    conn.request("GET", "/whoami")
    second = json.loads(conn.getresponse().read())
    conn.close()
    assert first["client"] == second["client"] != ""


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(
            request_bytes("GET", "/sleep?100")
            + request_bytes("POST", "/echo", b"second")
            + request_bytes("GET", "/v1/hello")
        )
        reader = sock.makefile("rb")
        bodies = [read_response(reader)[2] for _ in range(3)]
    assert json.loads(bodies[0]) == {"slept": "100"}
    assert json.loads(bodies[1]) == {"size": 6, "body": "second"}
    assert json.loads(bodies[2]) == {"hello": "wörld"}


def test_content_length_body(port: int) -> None:
    response, body = http_request(port, "POST", "/echo", b'{"prompt": "hi"}')
    assert response.status == 200
    assert json.loads(body) == {"size": 16, "body": '{"prompt": "hi"}'}


def test_chunked_body(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    conn.request("POST", "/echo", body=iter([b"abc", b"", b"defg"]), encode_chunked=True)
    response = conn.getresponse()
    assert json.loads(response.read()) == {"size": 7, "body": "abcdefg"}
    conn.close()


def test_expect_100_continue(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(request_bytes("POST", "/echo", Content_Length="5", Expect="100-continue"))
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 100 ")
        assert reader.readline() == b"\r\n"
        sock.sendall(b"hello")
        status, _, body = read_response(reader)
    assert status == 200
    assert json.loads(body) == {"size": 5, "body": "hello"}


def test_declared_body_over_limit_is_413_then_close(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(request_bytes("POST", "/echo", Content_Length=str(MAX_BODY + 1)))
        reader = sock.makefile("rb")
        status, headers, body = read_response(reader)
        assert status == 413
        assert headers["connection"] == "close"
        error = assert_error(body, "invalid_request")
        assert str(MAX_BODY) in error["details"]
        assert wait_closed(sock) == b""


def test_chunked_body_over_limit_is_413(port: int) -> None:
    with connect(port) as sock:
        piece = b"y" * 600
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        sock.sendall(request_bytes("POST", "/echo", Transfer_Encoding="chunked") + chunk * 2)
        status, _, body = read_response(sock.makefile("rb"))
    assert status == 413
    assert_error(body, "invalid_request")


def test_malformed_request_is_400_then_close(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        reader = sock.makefile("rb")
        status, headers, body = read_response(reader)
        assert status == 400
        assert headers["connection"] == "close"
        assert_error(body, "invalid_request")
        assert wait_closed(sock) == b""


def test_unknown_route_is_404(port: int) -> None:
    response, body = http_request(port, "GET", "/nope")
    assert response.status == 404
    assert "/nope" in assert_error(body, "not_found")["details"]


def test_wrong_method_is_405_with_allow(port: int) -> None:
    response, body = http_request(port, "PUT", "/v1/models/x")
    assert response.status == 405
    assert_error(body, "method_not_allowed")
    allowed = {m.strip() for m in response.getheader("allow", "").split(",")}
    assert allowed == {"GET", "HEAD", "DELETE", "OPTIONS"}


def test_head_has_gets_headers_and_no_body(port: int) -> None:
    _, get_body = http_request(port, "GET", "/v1/hello")
    with connect(port) as sock:
        # A second request on the same socket proves no body bytes followed the HEAD answer.
        sock.sendall(request_bytes("HEAD", "/v1/hello") + request_bytes("GET", "/whoami"))
        reader = sock.makefile("rb")
        status, headers, _ = read_response(reader, head_only=True)
        assert status == 200
        assert headers["content-length"] == str(len(get_body))
        assert headers["content-type"] == "application/json"
        status, _, body = read_response(reader)
        assert status == 200
        assert "client" in json.loads(body)


def test_options_answers_204_with_allow(port: int) -> None:
    response, body = http_request(port, "OPTIONS", "/echo")
    assert response.status == 204
    assert body == b""
    assert response.getheader("allow") == "POST, OPTIONS"
    response, _ = http_request(port, "OPTIONS", "/nope")
    assert response.status == 404


def test_handler_api_error_uses_its_status_and_body(port: int) -> None:
    response, body = http_request(port, "GET", "/api-error")
    assert response.status == 409
    assert json.loads(body) == {
        "error": {"code": "busy", "message": "Model is busy", "details": "try later"}
    }


def test_unexpected_exception_is_500_and_connection_survives(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    conn.request("GET", "/boom")
    response = conn.getresponse()
    body = response.read()
    assert response.status == 500
    error = assert_error(body, "server_error")
    assert "kaboom" not in error["details"]  # internals stay in the log
    conn.request("GET", "/v1/hello")
    assert conn.getresponse().status == 200
    conn.close()


def test_stream_is_chunked_and_arrives_incrementally(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    conn.request("GET", "/stream?gate-1")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("transfer-encoding") == "chunked"
    assert response.getheader("content-type") == "text/event-stream"
    assert response.getheader("cache-control") == "no-cache"
    assert response.getheader("content-length") is None
    # The generator holds back the rest until we have read the first event.
    assert response.readline() == b'data: {"n":0}\n'
    assert response.readline() == b"\n"
    signals["gate-1"].set()
    rest = response.read()
    assert rest == SSE_PING + sse_data({"n": 1, "text": "ünï"}) + SSE_DONE
    conn.request("GET", "/v1/hello")  # the connection is reusable after a stream
    assert conn.getresponse().status == 200
    conn.close()


def test_disconnect_mid_stream_runs_generator_finally(port: int) -> None:
    sock = connect(port)
    sock.sendall(request_bytes("GET", "/endless?endless-1"))
    reader = sock.makefile("rb")
    status, _ = read_head(reader)
    assert status == 200
    assert read_chunk(reader).startswith(b"data: ")
    assert not signals["endless-1"].is_set()
    reader.close()
    sock.close()
    assert signals["endless-1"].wait(1.0), "the generator's finally did not run"


def test_write_backpressure_holds_the_generator(port: int) -> None:
    sock = connect(port)
    sock.sendall(request_bytes("GET", "/flood?flood-1"))
    time.sleep(0.3)  # not reading: the socket buffers fill and the transport pauses
    produced = counters["flood-1"]
    assert 0 < produced < 500, produced
    sock.close()
    assert signals["flood-1"].wait(1.0)
    assert counters["flood-1"] < 500


def test_chunks_gather_while_the_client_is_not_reading(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting, to hold
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request_bytes("GET", "/trickle"))
    time.sleep(0.5)  # not reading: the transport pauses and the chunks gather
    reader = sock.makefile("rb")
    read_head(reader)
    frames = []
    while chunk := read_chunk(reader):
        frames.append(chunk)
    sock.close()
    body = b"".join(frames)
    assert body == b"".join(b"%05d:" % i + b"x" * 2000 for i in range(TRICKLE_CHUNKS))
    largest = max(len(frame) for frame in frames)
    # what gathered while the client was not reading left as one write, up to the cap
    assert 10 * 2006 < largest <= 64 * 1024 + 2006


def test_failing_stream_ends_the_connection(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(request_bytes("GET", "/failing-stream"))
        reader = sock.makefile("rb")
        status, headers = read_head(reader)
        assert (status, headers["transfer-encoding"]) == (200, "chunked")
        assert read_chunk(reader) == b"first"
        assert reader.read() == b""  # closed without the terminating chunk


def test_websocket_path_without_upgrade_is_426(port: int) -> None:
    response, body = http_request(port, "GET", "/ws/echo")
    assert response.status == 426
    assert response.getheader("upgrade") == "websocket"
    assert_error(body, "invalid_request")


def test_bad_websocket_version_is_400(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(
            request_bytes(
                "GET",
                "/ws/echo",
                Upgrade="websocket",
                Connection="Upgrade",
                Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZQ==",
                Sec_WebSocket_Version="8",
            )
        )
        status, _, body = read_response(sock.makefile("rb"))
    assert status == 400
    assert "13" in assert_error(body, "invalid_request")["details"]


# --- timeouts, lifecycle ---


def test_header_and_keepalive_timeouts_close_the_connection() -> None:
    server = ServerThread(header_timeout=0.3, keepalive_timeout=0.3)
    try:
        with connect(server.port) as slow:
            slow.sendall(b"GET /v1/hello HTTP/1.1\r\nHost: x\r\n")  # never finishes
            started = time.monotonic()
            assert wait_closed(slow) == b""
            assert 0.2 < time.monotonic() - started < 1.2
        with connect(server.port) as idle:
            idle.sendall(request_bytes("GET", "/v1/hello"))
            status, _, _ = read_response(idle.makefile("rb"))
            assert status == 200
            started = time.monotonic()
            assert wait_closed(idle) == b""
            assert 0.2 < time.monotonic() - started < 1.2
    finally:
        server.stop()


def test_busy_port_raises_oserror() -> None:
    async def scenario() -> None:
        first = Server(Router(), "127.0.0.1", 0)
        await first.start()
        try:
            with pytest.raises(OSError):
                await Server(Router(), "127.0.0.1", first.port).start()
        finally:
            await first.shutdown()

    asyncio.run(scenario())


def test_shutdown_cancels_running_streams() -> None:
    server = ServerThread()
    with connect(server.port) as sock:
        sock.sendall(request_bytes("GET", "/endless?shutdown-1"))
        reader = sock.makefile("rb")
        read_head(reader)
        read_chunk(reader)
        server.stop()
        assert signals["shutdown-1"].is_set()
        sock.settimeout(1)
        with contextlib.suppress(ConnectionResetError):
            while reader.read1(65536):
                pass  # the server closed the connection: reading ends


# --- WebSocket ---


def test_websocket_handshake_and_echo_on_one_connection(port: int) -> None:
    client = WsClient(port, "/ws/echo")
    for text in ["hello", "", "ünïcode ✓", "x" * 1000]:
        client.send(TextMessage(data=text))
        assert client.receive_text() == "echo:" + text
    client.close()


def test_websocket_frame_in_same_packet_as_handshake(port: int) -> None:
    # A client may send its first frame without waiting for the 101; h11 has buffered it.
    ws = WSConnection(ConnectionType.CLIENT)
    early_frame = FrameProtocol(client=True, extensions=[]).send_data("early")
    with connect(port) as sock:
        sock.sendall(ws.send(WsRequest(host="127.0.0.1", target="/ws/echo")) + early_frame)
        events: list[Event] = []
        while len(events) < 2:
            ws.receive_data(sock.recv(65536))
            events.extend(ws.events())
    assert isinstance(events[0], AcceptConnection)
    assert isinstance(events[1], TextMessage) and events[1].data == "echo:early"


def test_websocket_fragmented_message(port: int) -> None:
    client = WsClient(port, "/ws/echo")
    client.send(TextMessage(data="hel", message_finished=False))
    client.send(TextMessage(data="lo wör", message_finished=False))
    client.send(TextMessage(data="ld", message_finished=True))
    assert client.receive_text() == "echo:hello wörld"
    client.close()


def test_websocket_ping_gets_pong(port: int) -> None:
    client = WsClient(port, "/ws/echo")
    client.send(Ping(payload=b"are you there"))
    event = client.next_event()
    assert isinstance(event, Pong) and event.payload == b"are you there"
    client.close()


def test_websocket_client_close_handshake(port: int) -> None:
    client = WsClient(port, "/ws/echo")
    client.send(CloseConnection(code=1000, reason="bye"))
    client.expect_close(1000)
    client.assert_socket_closed()


def test_websocket_server_close_handshake(port: int) -> None:
    client = WsClient(port, "/ws/goodbye")
    assert client.receive_text() == "bye"
    event = client.expect_close(4000)
    assert event.reason == "done"
    client.send(event.response())
    client.assert_socket_closed()


@pytest.mark.parametrize("fragments", [1, 3])
def test_websocket_oversize_message_closes_1009(port: int, fragments: int) -> None:
    client = WsClient(port, "/ws/echo")
    piece = "z" * (MAX_WS // fragments + 1)
    for index in range(fragments):
        client.send(TextMessage(data=piece, message_finished=index == fragments - 1))
    client.expect_close(1009)
    client.send(CloseConnection(code=1009))
    client.assert_socket_closed()


def test_websocket_binary_message_closes_1003(port: int) -> None:
    client = WsClient(port, "/ws/echo")
    client.send(BytesMessage(data=b"\x00\x01"))
    client.expect_close(1003)
    client.close()


def test_websocket_disconnect_cancels_a_busy_handler(port: int) -> None:
    client = WsClient(port, "/ws/busy")
    client.send(TextMessage(data="start"))
    time.sleep(0.05)  # let the handler reach its "engine work"
    client.close()
    assert signals["ws-busy-cancelled"].wait(1.0)


def test_websocket_disconnect_ends_a_pending_receive(port: int) -> None:
    client = WsClient(port, "/ws/wait")
    client.close()
    assert signals["ws-wait-none"].wait(1.0)


def test_websocket_upgrade_to_unknown_path_is_404(port: int) -> None:
    ws = WSConnection(ConnectionType.CLIENT)
    with connect(port) as sock:
        sock.sendall(ws.send(WsRequest(host="127.0.0.1", target="/ws/nope")))
        status, _, body = read_response(sock.makefile("rb"))
    assert status == 404
    assert_error(body, "not_found")


@pytest.mark.parametrize("text", ["", "plain", 'quote " and \\ backslash', "line\nbreak\t",
                                  "中文 😀", "\x00text\x00", "</script>"])
def test_text_events_encode_like_a_whole_event(text: str) -> None:
    template = {"id": "x", "choices": [{"delta": {"content": TEXT_SLOT}, "index": 0}]}
    whole = sse_data({"id": "x", "choices": [{"delta": {"content": text}, "index": 0}]})
    assert TextEvents(template).event(text) == whole
