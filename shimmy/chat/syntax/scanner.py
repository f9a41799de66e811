"""The machinery every tool-call family shares: text outside calls, a call's lifecycle,
and the ``{"name": ..., "arguments": {...}}`` object most JSON-bodied families write.

A family subclasses ``CallScanner`` and names its openers: ``anywhere`` (markers such as
``<tool_call>`` that start calls wherever they appear) and ``leading`` (such as a bare
``{``, which starts a call only at the start of the output or right after another call).
Its ``call_body`` reads what follows an opener. Text that turns out to be no call is
emitted as text from where the attempt began; a call that breaks off after its
``ToolCallStart`` is closed with arguments completed to a valid object.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from shimmy.chat.events import (
    ParsedEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    new_call_id,
)
from shimmy.chat.syntax.jsonstream import JsonValue, read_json
from shimmy.chat.syntax.source import (
    Fail,
    Source,
    accept,
    accept_any,
    earliest,
    expect,
    partial_tail,
    peek,
    skip_ws,
)

Reading = Generator[None, None, Any]
NAME_LIMIT = 256  # characters a function name (with its decoration) may take


@dataclass(slots=True)
class _Call:
    index: int
    arguments: str = ""
    json: JsonValue | None = None  # while the arguments stream as JSON
    closing: str = "{}"  # what closes the arguments where json is None


@dataclass(slots=True)
class _Envelope:
    name: str | None = None
    has_arguments: bool = False
    raw_arguments: str | None = None  # read whole (name not known yet, or a string)


class CallScanner:
    """Splits content text into text and tool calls."""

    anywhere: tuple[str, ...] = ()
    leading: tuple[str, ...] = ()

    def __init__(self, tool_names: Collection[str] | None,
                 tool_schemas: Mapping[str, Any] | None = None) -> None:
        self.tools = frozenset(tool_names) if tool_names else None  # None: any name
        self.schemas = dict(tool_schemas or {})
        self.src = Source()
        self.events: list[ParsedEvent] = []
        self.calls = 0
        self.call: _Call | None = None
        self.region_start = 0
        self._run = self._main()
        self._running = True

    # -- driving

    def feed(self, text: str) -> list[ParsedEvent]:
        self.src.text += text
        self._resume()
        return self._take()

    def finish(self) -> list[ParsedEvent]:
        self.src.closed = True
        self._resume()
        return self._take()

    def _resume(self) -> None:
        if self._running:
            try:
                next(self._run)
            except StopIteration:
                self._running = False

    def _take(self) -> list[ParsedEvent]:
        events, self.events = self.events, []
        return events

    def _main(self) -> Reading:
        leading_ok, after_call = True, False
        while True:
            found = yield from self._text(leading_ok, after_call)
            if found is None:
                return
            opener, self.region_start = found
            try:
                yield from self.call_body(opener)
            except Fail:
                self._abandon()
                leading_ok = after_call = False
            else:
                leading_ok = after_call = True

    def call_body(self, opener: str) -> Reading:
        raise NotImplementedError

    # -- text between calls

    def _text(self, leading_ok: bool, after_call: bool) -> Reading:
        src = self.src
        src.drop_read()
        start = src.pos
        if leading_ok:  # whitespace here may come before a call: hold it
            yield from skip_ws(src)
            openers = self.leading + self.anywhere
            opener = (yield from accept_any(src, openers)) if openers else None
            if opener is not None:
                return opener, start
            if after_call and src.closed and src.pos == len(src.text):
                return None  # whitespace after the last call is no answer
            self.text(src.text[start:src.pos])
        while True:
            found = earliest(src.text, self.anywhere, src.pos) if self.anywhere else None
            if found is not None:
                at, opener = found
                self.text(src.text[src.pos:at])
                src.pos = at + len(opener)
                return opener, at
            held = 0 if src.closed else partial_tail(src.rest(), self.anywhere)
            end = len(src.text) - held
            self.text(src.text[src.pos:end])
            src.pos = end
            if src.closed:
                return None
            yield

    def text(self, text: str) -> None:
        if text:
            self.events.append(TextDelta(text))

    # -- a call's lifecycle

    def start_call(self, name: str) -> None:
        if self.tools is not None and name not in self.tools:
            raise Fail(f"unknown tool {name!r}")
        self.call = _Call(self.calls)
        self.calls += 1
        self.events.append(ToolCallStart(self.call.index, new_call_id(), name))

    def call_delta(self, piece: str) -> None:
        assert self.call is not None
        if piece:
            self.call.arguments += piece
            self.events.append(ToolCallDelta(self.call.index, piece))

    def end_call(self) -> None:
        assert self.call is not None
        self.events.append(ToolCallEnd(self.call.index, self.call.arguments))
        self.call = None
        self.region_start = self.src.pos

    def _abandon(self) -> None:
        call = self.call
        if call is None:  # nothing emitted for it: what was read is text after all
            self.text(self.src.text[self.region_start:self.src.pos])
            return
        if not call.arguments:
            self.call_delta("{}")
        elif call.json is not None:
            self.call_delta(call.json.completion())
        else:
            self.call_delta(call.closing)
        self.end_call()

    def stream_arguments(self) -> Reading:
        """Reads a JSON object as the current call's arguments, emitting it as it comes."""
        assert self.call is not None
        yield from skip_ws(self.src)
        if (yield from peek(self.src)) != "{":
            raise Fail("arguments are no JSON object")
        self.call.json = JsonValue()
        yield from read_json(self.src, self.call_delta, self.call.json)

    # -- {"name": ..., "arguments": {...}}

    def envelope(self) -> Reading:
        """One call written as a JSON object; "parameters" may stand for "arguments",
        and both may sit in a nested "function" object."""
        state = _Envelope()
        yield from self._members(state)
        if state.name is None:
            raise Fail("no name")
        if self.call is None:
            self.start_call(state.name)
        if self.call.json is None:
            self.call_delta(_arguments_text(state.raw_arguments))
        self.end_call()

    def envelope_list(self) -> Reading:
        """Calls as a JSON array of envelopes."""
        src = self.src
        yield from skip_ws(src)
        yield from expect(src, "[")
        while True:
            yield from skip_ws(src)
            yield from self.envelope()
            yield from skip_ws(src)
            if (yield from accept_any(src, (",", "]"))) in (None, "]"):
                return
            self.region_start = src.pos

    def envelopes(self) -> Reading:
        """An envelope or an array of them, whichever comes."""
        yield from skip_ws(self.src)
        if (yield from peek(self.src)) == "[":
            yield from self.envelope_list()
        else:
            yield from self.envelope()

    def _members(self, state: _Envelope) -> Reading:
        src = self.src
        yield from skip_ws(src)
        yield from expect(src, "{")
        yield from skip_ws(src)
        if (yield from accept(src, "}")):
            return
        while True:
            yield from skip_ws(src)
            if (yield from peek(src)) != '"':
                raise Fail("expected a key")
            key = json.loads((yield from read_json(src)))
            yield from skip_ws(src)
            yield from expect(src, ":")
            yield from skip_ws(src)
            yield from self._member(key, state)
            yield from skip_ws(src)
            separator = yield from accept_any(src, (",", "}"))
            if separator is None:
                raise Fail("expected ',' or '}'")
            if separator == "}":
                return

    def _member(self, key: str, state: _Envelope) -> Reading:
        src = self.src
        ahead = yield from peek(src)
        if key == "name" and state.name is None:
            name = json.loads((yield from read_json(src)))
            if not isinstance(name, str):
                raise Fail("name is no string")
            if not state.has_arguments:
                self.start_call(name)
            elif self.tools is not None and name not in self.tools:
                raise Fail(f"unknown tool {name!r}")
            state.name = name
        elif key in ("arguments", "parameters") and not state.has_arguments:
            state.has_arguments = True
            if self.call is not None and ahead == "{":
                yield from self.stream_arguments()
            else:
                state.raw_arguments = yield from read_json(src)
        elif key == "function" and ahead == "{" and state.name is None:
            yield from self._members(state)
        else:
            yield from read_json(src)


def _arguments_text(raw: str | None) -> str:
    """Arguments read whole: an object's text, or a string holding one."""
    if raw is None:
        return "{}"
    value = json.loads(raw)
    if value is None:
        return "{}"
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as error:
            raise Fail("arguments string holds no JSON") from error
        if not isinstance(value, dict):
            raise Fail("arguments are no object")
        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, dict):
        raise Fail("arguments are no object")
    return raw


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is no JSON")
