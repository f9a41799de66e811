"""WebSocket connections (wsproto) taken over from an upgraded HTTP connection."""

from __future__ import annotations

import asyncio
import logging

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from shimmy.http.connections import ConnectionSet, WriteFlow
from shimmy.http.types import ServerObserver, WebSocketHandler
from shimmy.logs import RequestRecord, current_request, log_request, request_id

logger = logging.getLogger("shimmy.http")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

CLOSE_HANDSHAKE_TIMEOUT = 2.0  # how long to wait for the peer's Close after sending ours
_QUEUE_HIGH = 64  # unread messages at which we stop reading from the socket
_QUEUE_LOW = 16  # ... and resume once the handler has caught up to this


class ServerWebSocket(asyncio.Protocol):
    """One server-side WebSocket: the asyncio protocol over wsproto and the handler's
    ``WebSocket`` (see ``shimmy.http.types``).

    Text only: a binary message closes the connection with 1003. A message (all its
    fragments together) over ``max_message_bytes`` of UTF-8 closes it with 1009. Pings are
    answered and the close handshake completed here. When the connection goes, a pending
    ``receive_text`` returns ``None``; a handler busy elsewhere is cancelled, so work for
    a client that is gone stops (unless the handler itself started the close).

    Each message the handler receives is one request in the log and the metrics: its
    record is current from ``receive_text`` returning it until the next call.
    """

    def __init__(
        self,
        handler: WebSocketHandler,
        *,
        max_message_bytes: int,
        flow: WriteFlow,
        connections: ConnectionSet,
        client: str = "",
        path: str = "",
        route: str = "",
        observer: ServerObserver | None = None,
    ) -> None:
        self._handler = handler
        self._max_message_bytes = max_message_bytes
        self._flow = flow
        self._connections = connections
        self._client = client
        self._path = path
        self._route = route
        self._observer = observer
        self._record: RequestRecord | None = None
        self._draining = False
        self._loop = asyncio.get_running_loop()
        self._ws = WSConnection(ConnectionType.SERVER)
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._messages: asyncio.Queue[str | None] = asyncio.Queue()
        self._fragments: list[str] = []
        self._fragment_bytes = 0
        self._ended = False  # None was queued: no message comes after those queued
        self._receiving = False
        self._reading_paused = False
        self._closed_by_handler = False
        self._lost = False

    # --- the handler's side (the WebSocket protocol) ---

    @property
    def closed(self) -> bool:
        return self._lost or self._ws.state is not ConnectionState.OPEN

    async def receive_text(self) -> str | None:
        self._finish_record()
        if self._draining:
            self._start_close(CLOSE_GOING_AWAY, "server shutting down")
            return None
        if self._ended and self._messages.empty():
            return None
        self._receiving = True
        try:
            message = await self._messages.get()
        finally:
            self._receiving = False
        if self._reading_paused and self._messages.qsize() <= _QUEUE_LOW:
            self._set_reading(True)
        if message is not None:
            self._open_record()
        return message

    async def send_text(self, text: str) -> None:
        if self.closed:
            return
        await self._flow.drain()
        if not self.closed:
            self._write(self._ws.send(TextMessage(data=text)))

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        self._closed_by_handler = True
        self._start_close(code, reason)

    # --- taking over the connection ---

    def start(self, transport: asyncio.Transport, handshake: bytes, trailing: bytes) -> None:
        """Take over ``transport``: answer the upgrade request ``handshake`` (its head, as
        received), then read ``trailing`` (bytes that followed it) as frames."""
        self._transport = transport
        self._connections.add(self)
        transport.set_protocol(self)
        self.data_received(handshake)
        if trailing:
            self.data_received(trailing)

    def drain(self) -> None:
        """Let the request in progress finish; close instead of reading another."""
        self._draining = True
        if self._receiving or self._task is None:
            self._start_close(CLOSE_GOING_AWAY, "server shutting down")

    def shutdown(self) -> asyncio.Task[None] | None:
        self._start_close(CLOSE_GOING_AWAY, "server shutting down")
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        if self._transport is not None:
            self._transport.close()
        return task

    # --- asyncio.Protocol ---

    def data_received(self, data: bytes) -> None:
        if self._lost or self._ws.state is ConnectionState.CLOSED:
            return
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._handle_event(event)
        except RemoteProtocolError as exc:
            # Only a bad handshake raises; the HTTP side has vetted the usual headers.
            self._reject(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_close_timer()
        self._flow.resume()
        self._connections.discard(self)
        self._end_messages()
        # A handler waiting in receive_text gets None instead; one busy elsewhere is cancelled.
        busy = not self._receiving and not self._closed_by_handler
        if busy and self._task is not None and not self._task.done():
            self._task.cancel()
        logger.debug("websocket %s closed", self._client)

    def pause_writing(self) -> None:
        self._flow.pause()

    def resume_writing(self) -> None:
        self._flow.resume()

    # --- events from the peer ---

    def _handle_event(self, event: Event) -> None:
        if isinstance(event, Request):
            self._accept()
        elif isinstance(event, TextMessage):
            self._on_text(event)
        elif isinstance(event, BytesMessage):
            self._start_close(CLOSE_UNSUPPORTED_DATA, "binary messages are not supported")
        elif isinstance(event, Ping):
            if self._ws.state is ConnectionState.OPEN:
                self._write(self._ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self._on_close(event)

    def _accept(self) -> None:
        self._write(self._ws.send(AcceptConnection(extra_headers=[(b"server", b"shimmy")])))
        self._task = self._loop.create_task(self._run_handler())
        logger.debug("websocket %s opened", self._client)

    def _reject(self, exc: RemoteProtocolError) -> None:
        hint = exc.event_hint
        if isinstance(hint, RejectConnection):
            self._write(self._ws.send(hint))
        if self._transport is not None:
            self._transport.close()

    def _on_text(self, event: TextMessage) -> None:
        if self.closed:
            return  # after our Close, the peer's data is dropped
        self._fragments.append(event.data)
        self._fragment_bytes += len(event.data.encode())
        if self._fragment_bytes > self._max_message_bytes:
            limit = self._max_message_bytes
            self._start_close(CLOSE_MESSAGE_TOO_BIG, f"message exceeds {limit} bytes")
            return
        if event.message_finished:
            message = "".join(self._fragments)
            self._fragments.clear()
            self._fragment_bytes = 0
            self._messages.put_nowait(message)
            if self._messages.qsize() >= _QUEUE_HIGH:
                self._set_reading(False)

    def _on_close(self, event: CloseConnection) -> None:
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            self._write(self._ws.send(event.response()))
        elif state is ConnectionState.OPEN:
            # wsproto reports frames it cannot parse as a Close it wants us to send.
            self._write(self._ws.send(CloseConnection(code=event.code, reason=event.reason)))
        self._end_messages()
        if self._transport is not None:
            self._transport.close()

    # --- helpers ---

    async def _run_handler(self) -> None:
        try:
            await self._handler(self)
        except Exception:
            logger.exception("WebSocket handler failed")
            self._finish_record(note="handler failed")
            await self.close(CLOSE_INTERNAL_ERROR, "internal error")
        else:
            await self.close()
        finally:
            self._finish_record(note="cancelled" if self._lost else "")

    def _open_record(self) -> None:
        record = RequestRecord(request_id(), "WS", self._path, self._client, kind="websocket",
                               route=self._route)
        self._record = record
        current_request.set(record)  # the handler's task: what it starts is tied to this
        if self._observer is not None:
            self._observer.request_started(record)

    def _finish_record(self, note: str = "") -> None:
        record, self._record = self._record, None
        if record is None or not record.finish(note=note):
            return
        current_request.set(None)
        if self._observer is not None:
            self._observer.request_finished(record)
        log_request(record)

    def _start_close(self, code: int, reason: str) -> None:
        """Send our Close (if still open) and give the peer a while to answer it."""
        if not self._lost and self._ws.state is ConnectionState.OPEN:
            self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
            if self._transport is not None:
                timeout = CLOSE_HANDSHAKE_TIMEOUT
                self._close_timer = self._loop.call_later(timeout, self._transport.close)
        self._end_messages()

    def _end_messages(self) -> None:
        if not self._ended:
            self._ended = True
            self._messages.put_nowait(None)

    def _set_reading(self, reading: bool) -> None:
        if self._transport is None or self._lost:
            return
        self._reading_paused = not reading
        if reading:
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()

    def _cancel_close_timer(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
