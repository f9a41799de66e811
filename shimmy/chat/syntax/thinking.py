"""Splitting ``<think>…</think>`` at the start of the output from the answer after it.

Like llama.cpp's parsers, the thinking is trimmed at both ends and the whitespace between
``</think>`` and the answer is dropped. Granite 3.x wraps the answer in
``<response>…</response>`` after its thinking; those tags are dropped too.
"""

from __future__ import annotations

from shimmy.chat.syntax.source import partial_tail

OPEN, CLOSE = "<think>", "</think>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<response>", "</response>"

Piece = tuple[bool, str]  # (is thinking, text)


class ThinkingSplitter:
    def __init__(self, *, open_thinking: bool = False, response_tags: bool = False) -> None:
        self._state = "think_start" if open_thinking else "start"
        self._response_tags = response_tags
        self._in_response = False
        self._buf = ""
        self._final = False

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        out: list[Piece] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[Piece]:
        self._final = True
        return self.feed("")

    def _step(self, out: list[Piece]) -> bool:
        """Does what the buffer allows in the current state; True if the state changed."""
        return getattr(self, f"_{self._state}")(out)

    def _start(self, out: list[Piece]) -> bool:
        return self._opening(out, default="content")

    def _think_start(self, out: list[Piece]) -> bool:
        # the prompt opened the block; a model may still write the tag again
        return self._opening(out, default="think_lead")

    def _opening(self, out: list[Piece], default: str) -> bool:
        stripped = self._buf.lstrip()
        if stripped.startswith(OPEN):
            self._buf = stripped[len(OPEN):]
            self._state = "think_lead"
            return True
        if OPEN.startswith(stripped) and not self._final:
            return False
        self._state = default
        return True

    def _think_lead(self, out: list[Piece]) -> bool:
        self._buf = self._buf.lstrip()
        if not self._buf and not self._final:
            return False
        self._state = "think"
        return True

    def _think(self, out: list[Piece]) -> bool:
        at = self._buf.find(CLOSE)
        if at >= 0:
            _add(out, True, self._buf[:at].rstrip())
            self._buf = self._buf[at + len(CLOSE):]
            self._state = "after"
            return True
        if self._final:
            _add(out, True, self._buf.rstrip())
            self._buf = ""
            return False
        held = partial_tail(self._buf, (CLOSE,))
        ready = self._buf[:len(self._buf) - held].rstrip()  # trailing space may end it
        _add(out, True, ready)
        self._buf = self._buf[len(ready):]
        return False

    def _after(self, out: list[Piece]) -> bool:
        self._buf = self._buf.lstrip()
        if not self._buf and not self._final:
            return False
        if self._response_tags:
            if self._buf.startswith(RESPONSE_OPEN):
                self._buf = self._buf[len(RESPONSE_OPEN):]
                self._in_response = True
            elif RESPONSE_OPEN.startswith(self._buf) and not self._final:
                return False
        self._state = "content"
        return True

    def _content(self, out: list[Piece]) -> bool:
        if not self._in_response:
            _add(out, False, self._buf)
            self._buf = ""
            return False
        at = self._buf.find(RESPONSE_CLOSE)
        if at >= 0:
            _add(out, False, self._buf[:at])
            self._buf = self._buf[at + len(RESPONSE_CLOSE):]
            self._in_response = False
            return True
        held = 0 if self._final else partial_tail(self._buf, (RESPONSE_CLOSE,))
        _add(out, False, self._buf[:len(self._buf) - held])
        self._buf = self._buf[len(self._buf) - held:]
        return False


def _add(out: list[Piece], thinking: bool, text: str) -> None:
    if text:
        out.append((thinking, text))
