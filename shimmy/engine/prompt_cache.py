"""Slots' cells kept in host memory after their slot moves on (``--prompt-cache``).

A slot keeps its last request's cells until another request takes it over; this keeps
copies of the cells being replaced, least recently used first out once the size cap is
reached, so a prompt seen before (a system prompt shared by many chats, a repeated
request) is read from memory instead of recomputed. Only the scheduler's thread uses it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    tokens: tuple[int, ...]
    cells: bytes
    marks: tuple[int, int, int] | None = None  # BatchEngine.marks of the slot saved


class PromptCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.size = 0
        self._entries: OrderedDict[tuple[int, ...], Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tokens: tuple[int, ...]) -> bool:
        return tokens in self._entries

    def fits(self, size: int) -> bool:
        """Whether an entry of ``size`` bytes would be kept (``put`` drops larger ones)."""
        return 0 < size <= self.capacity

    def put(self, tokens: list[int], cells: bytes,
            marks: tuple[int, int, int] | None = None) -> None:
        """Keep ``cells`` (holding ``tokens``); entries it extends are dropped, since it
        serves every prompt they serve."""
        if not tokens or not self.fits(len(cells)):
            return
        key = tuple(tokens)
        for older in [k for k in self._entries if key[:len(k)] == k]:
            self._drop(older)
        self._entries[key] = Entry(key, cells, marks)
        self.size += len(cells)
        while self.size > self.capacity:
            self._drop(next(iter(self._entries)))

    def best(self, prompt: list[int]) -> tuple[Entry, int] | None:
        """The entry sharing the longest prefix with ``prompt``, and that length; None
        if none shares a token. The entry counts as just used."""
        found: Entry | None = None
        longest = 0
        wanted = tuple(prompt)
        for entry in self._entries.values():
            shared = _common_prefix(entry.tokens, wanted)
            if shared > longest:
                found, longest = entry, shared
        if found is None:
            return None
        self._entries.move_to_end(found.tokens)
        return found, longest

    def _drop(self, key: tuple[int, ...]) -> None:
        self.size -= len(self._entries.pop(key).cells)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] matches, a[:high] does not: bisect the first difference
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low
