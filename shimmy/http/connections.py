"""The server's live connections, and the write flow control they share.

Kept apart from the WebSocket module so that the HTTP server loads wsproto only when a
client first asks for an upgrade.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Protocol


class WriteFlow:
    """The transport's ``pause_writing``/``resume_writing`` as something to await.

    Shared by the HTTP protocol and the WebSocket protocol that takes over its transport.
    """

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def paused(self) -> bool:
        return not self._writable.is_set()

    def pause(self) -> None:
        self._writable.clear()

    def resume(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()


class ServerConnection(Protocol):
    """What the server needs from each live connection to shut it down."""

    def drain(self) -> None:
        """Finish the request in progress, take no new one, then close."""

    def shutdown(self) -> asyncio.Task[None] | None:
        """Close the connection and cancel its handler; returns the task to await, if any."""


class ConnectionSet:
    """The server's live connections; tells ``on_change`` how many there are."""

    def __init__(self, on_change: Callable[[int], None] | None = None) -> None:
        self._members: set[ServerConnection] = set()
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[ServerConnection]:
        return iter(list(self._members))

    def add(self, connection: ServerConnection) -> None:
        if connection not in self._members:
            self._members.add(connection)
            self._changed()

    def discard(self, connection: ServerConnection) -> None:
        if connection in self._members:
            self._members.discard(connection)
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(len(self._members))
