"""Response bodies that stay tied to the generation behind them."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from shimmy.engine.scheduler import Generation


class GenerationStream:
    """An async iterator of body chunks that cancels its generation when closed.

    The server closes a response body when its client goes away. A generator closed
    before its first chunk never runs its ``finally``, so the cancel lives here.
    """

    def __init__(self, generation: Generation, chunks: AsyncGenerator[bytes, None]) -> None:
        self._generation = generation
        self._chunks = chunks

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            self._generation.cancel()
