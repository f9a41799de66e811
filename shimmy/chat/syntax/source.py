"""Reading model output that arrives in pieces, from generator-based parsers.

A family's parser is a generator over a ``Source``: it reads what has arrived and
``yield``s (nothing) whenever it needs more text. ``feed`` appends text and resumes it;
``close`` marks the end of the output, after which reads see the end instead of waiting.
The helpers below are sub-generators, used with ``yield from``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

Reading = Generator[None, None, object]


class Fail(Exception):
    """The text being read is not (or no longer) the syntax expected."""


class Source:
    """The output text so far and the read position in it."""

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0
        self.closed = False

    def rest(self) -> str:
        return self.text[self.pos:]

    def drop_read(self) -> None:
        """Forget text already read (call only where nothing before pos is needed)."""
        if self.pos > 4096:
            self.text = self.text[self.pos:]
            self.pos = 0


def peek(src: Source) -> Generator[None, None, str]:
    """The next character, or "" at the end of the output."""
    while src.pos >= len(src.text):
        if src.closed:
            return ""
        yield
    return src.text[src.pos]


def skip_ws(src: Source) -> Generator[None, None, str]:
    """Skips whitespace; returns what it skipped."""
    start = src.pos
    while True:
        ch = yield from peek(src)
        if not ch or not ch.isspace():
            return src.text[start:src.pos]
        src.pos += 1


def accept_any(src: Source, literals: Sequence[str]) -> Generator[None, None, str | None]:
    """Consumes whichever literal comes next and returns it; None (nothing consumed) when
    none can. Waits while what has arrived is still a prefix of one of them."""
    while True:
        ahead = src.text[src.pos:src.pos + max(map(len, literals))]
        for literal in literals:
            if ahead.startswith(literal):
                src.pos += len(literal)
                return literal
        if src.closed or not any(lit.startswith(ahead) for lit in literals):
            return None
        yield


def accept(src: Source, literal: str) -> Generator[None, None, bool]:
    return (yield from accept_any(src, (literal,))) is not None


def expect(src: Source, literal: str) -> Generator[None, None, None]:
    if not (yield from accept(src, literal)):
        raise Fail(f"expected {literal!r}")


def read_until(src: Source, markers: Sequence[str],
               limit: int | None = None) -> Generator[None, None, tuple[str, str]]:
    """Reads up to the first of ``markers`` and consumes it; returns (text, marker).
    Fails at the end of the output, or once ``limit`` characters passed without one."""
    start = searched = src.pos
    longest = max(map(len, markers))
    while True:
        found = earliest(src.text, markers, searched)
        if found is not None:
            at, marker = found
            src.pos = at + len(marker)
            return src.text[start:at], marker
        searched = max(start, len(src.text) - longest + 1)
        if limit is not None and len(src.text) - start > limit + longest:
            raise Fail("no end marker within limit")
        if src.closed:
            raise Fail("output ended before " + " / ".join(markers))
        yield


def earliest(text: str, markers: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """The first occurrence of any marker at or after start (longest wins a tie)."""
    best: tuple[int, str] | None = None
    for marker in markers:
        at = text.find(marker, start)
        if at >= 0 and (best is None or at < best[0]
                        or (at == best[0] and len(marker) > len(best[1]))):
            best = (at, marker)
    return best


def partial_tail(text: str, markers: Sequence[str]) -> int:
    """How many characters at the end of text could be the start of a marker."""
    held = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), held, -1):
            if text.endswith(marker[:size]):
                held = size
                break
    return held
