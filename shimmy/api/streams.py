"""Response bodies that stay tied to the work behind them."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable


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
