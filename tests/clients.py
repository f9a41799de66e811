"""Blocking test clients over raw sockets: no third-party HTTP or WebSocket libraries."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections import deque
from collections.abc import Iterator
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, TextMessage
from wsproto.events import Request as WsRequest


def connect(port: int, timeout: float = 3) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def wait_closed(sock: socket.socket, timeout: float = 1.5) -> bytes:
    """Read until the server closes; returns what came before the close."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


class WsClient:
    def __init__(self, port: int, path: str) -> None:
        self.sock = connect(port)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: deque[Event] = deque()
        self.send(WsRequest(host="127.0.0.1", target=path))
        accepted = self.next_event()
        assert isinstance(accepted, AcceptConnection), accepted

    def send(self, event: Event) -> None:
        self.sock.sendall(self.ws.send(event))

    def next_event(self) -> Event:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the socket")
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        return self.pending.popleft()

    def receive_text(self) -> str:
        parts = []
        while True:
            event = self.next_event()
            assert isinstance(event, TextMessage), event
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts)

    def expect_close(self, code: int) -> CloseConnection:
        event = self.next_event()
        assert isinstance(event, CloseConnection), event
        assert event.code == code
        return event

    def assert_socket_closed(self) -> None:
        assert wait_closed(self.sock) == b""
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def request(port: int, method: str, path: str, body: Any = None, timeout: float = 120,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; a dict or list body is sent as JSON, bytes as they are."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    payload = json.dumps(body).encode() if isinstance(body, dict | list) else body
    headers = dict(headers or {})
    if payload is not None and "content-type" not in {name.lower() for name in headers}:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def busy_slots(port: int) -> int:
    """Slots of the (single) served model generating right now, from GET /api/models."""
    _, body = request_json(port, "GET", "/api/models")
    return body["models"][0]["slots"]["busy"]


def request_json(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, _, data = request(port, method, path, body)
    return status, json.loads(data)


def sse_events(port: int, path: str, body: Any, timeout: float = 120) -> Iterator[Any]:
    """The ``data:`` events of a streamed response, parsed; ``[DONE]`` comes as a string."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        assert response.getheader("content-type", "").startswith("text/event-stream")
        for line in response:
            text = line.decode("utf-8").rstrip("\r\n")
            if text.startswith("data: "):
                data = text[len("data: "):]
                yield data if data == "[DONE]" else json.loads(data)
    finally:
        conn.close()
