"""Response bodies that stay tied to the work behind them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from shimmy.engine.scheduler import Generation

PING_SECONDS = 10.0  # a keep-alive this often while a long prompt is read


class CancellingStream:
    """An async iterator of body chunks that calls ``cancel`` when it is closed.

    The server closes a response body when its client goes away. A generator closed
    before its first chunk never runs its ``finally``, so the cancel lives here.
    """

    def __init__(self, chunks: AsyncGenerator[bytes, None], cancel: Callable[[], None]) -> None:
        self._chunks = chunks
        self._cancel = cancel

    def __aiter__(self) -> CancellingStream:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            self._cancel()


async def with_pings(chunks: AsyncIterator[bytes], generation: Generation,
                     ping: Callable[[], bytes],
                     interval: float = PING_SECONDS) -> AsyncIterator[bytes]:
    """Pass ``chunks`` through, adding ``ping()`` while nothing has come for a while
    before the first token (a long prompt being read), so that clients and proxies
    with idle timeouts keep the stream open. Each API says what its keep-alive is."""
    iterator = chunks.__aiter__()
    pending = asyncio.ensure_future(iterator.__anext__())
    try:
        while generation.first_piece_at is None:
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield ping()
                continue
            try:
                yield pending.result()
            except StopAsyncIteration:
                return
            pending = asyncio.ensure_future(iterator.__anext__())
        try:
            yield await pending
        except StopAsyncIteration:
            return
        async for chunk in iterator:  # no more pings: no task per chunk either
            yield chunk
    finally:
        pending.cancel()
