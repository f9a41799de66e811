"""gpt-oss's harmony format: a run of messages, each a header, ``<|message|>`` and a body.

``<|channel|>analysis<|message|>…<|end|>`` is thinking; ``final`` (and ``commentary``
without a recipient) is the answer; a message to ``functions.NAME`` (``<|channel|>
commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>``, or with the
recipient before the channel) is a tool call. Messages to other recipients (built-in
tools) and calls of unknown functions are kept as text, markup included.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from shimmy.chat.events import ThinkingDelta
from shimmy.chat.syntax.scanner import CallScanner, Reading
from shimmy.chat.syntax.source import (
    Fail,
    accept_any,
    earliest,
    partial_tail,
    read_until,
    skip_ws,
)

TERMINATORS = ("<|end|>", "<|call|>", "<|return|>")
STARTS = ("<|start|>", "<|channel|>")
BOUNDARIES = TERMINATORS + STARTS
HEADER_LIMIT = 512
_RECIPIENT = re.compile(r"to=([^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>\s*([^\s<]+)")


class HarmonyScanner(CallScanner):
    def __init__(self, tool_names: Collection[str] | None,
                 tool_schemas: Mapping[str, Any] | None = None, *,
                 thinking: bool = True) -> None:
        super().__init__(tool_names, tool_schemas)
        self.parse_calls = bool(tool_names)
        self.thinking = thinking

    def _main(self) -> Reading:
        src = self.src
        opener = yield from accept_any(src, (*STARTS, " to="))
        if opener is not None:
            src.pos -= len(opener)
        in_header = opener is not None
        while True:
            kind, header, name = "text", "", ""
            if in_header:
                kind, header, name = yield from self._header()
            if kind == "call":
                boundary = yield from self._call_message(name)
            else:
                boundary = yield from self._message(kind, header)
            if boundary is None:
                return
            src.drop_read()
            if boundary in TERMINATORS:
                yield from skip_ws(src)
                boundary = yield from accept_any(src, STARTS)
            in_header = boundary is not None
            if boundary is not None:
                src.pos -= len(boundary)

    def _header(self) -> Reading:
        """Reads a header through ``<|message|>``: (kind, its text, function name)."""
        src = self.src
        start = src.pos
        try:
            yield from read_until(src, ("<|message|>",), limit=HEADER_LIMIT)
        except Fail:  # no header after all: its marker is text
            marker = next((m for m in STARTS if src.text.startswith(m, start)), "")
            self.text(marker)
            src.pos = start + len(marker)
            return "text", "", ""
        header = src.text[start:src.pos]
        recipients = _RECIPIENT.findall(header)
        channels = _CHANNEL.findall(header)
        recipient = recipients[-1] if recipients else ""
        if recipient.startswith("functions."):
            name = recipient.removeprefix("functions.")
            known = self.parse_calls and (self.tools is None or name in self.tools)
            return ("call" if known else "raw"), header, name
        if recipient not in ("", "assistant", "user", "all"):
            return "raw", header, ""
        if channels and channels[-1] == "analysis":
            return ("thinking" if self.thinking else "raw"), header, ""
        return "text", header, ""

    def _message(self, kind: str, header: str) -> Reading:
        """A message's body through its end; returns the boundary met (None: the end)."""
        src = self.src
        if kind == "raw":
            self.text(header)
        emit = self._thinking if kind == "thinking" else self.text
        while True:
            found = earliest(src.text, BOUNDARIES, src.pos)
            if found is not None:
                at, boundary = found
                emit(src.text[src.pos:at])
                src.pos = at + len(boundary)
                if kind == "raw" and boundary in TERMINATORS:
                    self.text(boundary)
                return boundary
            held = 0 if src.closed else partial_tail(src.rest(), BOUNDARIES)
            end = len(src.text) - held
            emit(src.text[src.pos:end])
            src.pos = end
            if src.closed:
                return None
            yield

    def _call_message(self, name: str) -> Reading:
        src = self.src
        self.start_call(name)
        try:
            yield from self.stream_arguments()
        except Fail:
            self._abandon()
            return (yield from self._message("text", ""))
        self.end_call()
        yield from skip_ws(src)
        boundary = yield from accept_any(src, BOUNDARIES)
        if boundary is None and not src.closed:
            return (yield from self._message("text", ""))
        return boundary

    def _thinking(self, text: str) -> None:
        if text:
            self.events.append(ThinkingDelta(text))
