"""An incremental JSON validator that says which of the text read so far is safe to emit.

Tool-call arguments are streamed as the model writes them, so a call that breaks off (the
output ends, or the model writes something that is no JSON) must still close as a valid
object: ``JsonValue`` emits only text after which the value can be completed
(``completion()``), holding back an escape sequence, a number or literal, or a comma until
what follows them arrives. Raw control characters inside strings, which JSON forbids and
models sometimes write, are emitted escaped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator

from shimmy.chat.syntax.source import Fail, Source, peek

_TOKEN = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")
_TOKEN_CHARS = frozenset("+-.0123456789eEtrufalsn")
_ESCAPES = frozenset('"\\/bfnrtu')
_HEX = frozenset("0123456789abcdefABCDEF")

# what the next character may be
VALUE, VALUE_OR_CLOSE, KEY, KEY_OR_CLOSE, COLON, COMMA_OR_CLOSE = range(6)


class JsonValue:
    """Reads one JSON value a character at a time."""

    def __init__(self) -> None:
        self.stack = ""  # open containers, "{" and "["
        self.expect = VALUE
        self.in_string = False
        self.is_key = False
        self.done = False
        self._escape = ""  # an escape sequence still being read
        self._token = ""  # a number or literal still being read
        self._held = ""  # read, valid, but not yet safe to emit
        self._safe: list[str] = []
        self._safe_state = (self.stack, self.expect, False, False)
        self.text = ""  # everything read and accepted, as emitted

    # -- feeding

    def push(self, ch: str) -> bool:
        """Reads ch; False if the value had already ended before it (ch not consumed).
        Raises Fail where ch cannot continue the value."""
        if self.done:
            return False
        if self.in_string:
            self._string_char(ch)
        elif self._token:
            if ch in _TOKEN_CHARS:
                self._token += ch
                self._held += ch
                return True
            self._end_token()
            self._settle()
            if self.done:
                return False
            return self.push(ch)
        else:
            self._structural(ch)
        self._settle()
        return True

    def finish(self) -> None:
        """The text ended here: a top-level number or literal ends with it."""
        if self._token and not self.stack:
            self._end_token()
            self._settle()

    def take(self) -> str:
        """The text that became safe to emit since the last call."""
        piece = "".join(self._safe)
        self._safe.clear()
        return piece

    def completion(self) -> str:
        """What closes the value after the text emitted so far."""
        stack, expect, in_string, is_key = self._safe_state
        tail = ""
        if in_string:
            tail += '"'
            if is_key:
                tail += ": null"
        elif expect == COLON:
            tail += ": null"
        elif expect == VALUE and stack.endswith("{"):
            tail += "null"
        return tail + "".join("}" if c == "{" else "]" for c in reversed(stack))

    # -- internals

    def _emit(self, text: str) -> None:
        self._held += text

    def _settle(self) -> None:
        """Moves held text to safe where nothing pending remains."""
        if self._escape or self._token or self._comma_pending():
            return
        if self._held:
            self._safe.append(self._held)
            self.text += self._held
            self._held = ""
        self._safe_state = (self.stack, self.expect, self.in_string, self.is_key)

    def _comma_pending(self) -> bool:
        return (not self.in_string and self.expect in (KEY, VALUE)
                and self._held.lstrip().startswith(","))

    def _string_char(self, ch: str) -> None:
        if self._escape:
            self._escape_char(ch)
        elif ch == "\\":
            self._escape = ch
            self._emit(ch)
        elif ch == '"':
            self.in_string = False
            self._emit(ch)
            self._after_value(key=self.is_key)
        elif ch < " ":
            self._emit(json.dumps(ch)[1:-1])
        else:
            self._emit(ch)

    def _escape_char(self, ch: str) -> None:
        if len(self._escape) == 1:
            if ch not in _ESCAPES:
                raise Fail("bad escape")
        elif ch not in _HEX:
            raise Fail("bad unicode escape")
        self._escape += ch
        self._emit(ch)
        if self._escape[1] != "u" or len(self._escape) == 6:
            self._escape = ""

    def _structural(self, ch: str) -> None:
        if ch.isspace():
            if self.expect == VALUE and not self.stack and not self.text and not self._held:
                return  # leading whitespace is not part of the value
            self._emit(ch)
        elif self.expect in (VALUE, VALUE_OR_CLOSE):
            self._value_start(ch)
        elif self.expect in (KEY, KEY_OR_CLOSE):
            if ch == '"':
                self._open_string(key=True)
            elif ch == "}" and self.expect == KEY_OR_CLOSE:
                self._close("{", ch)
            else:
                raise Fail("expected a key")
        elif self.expect == COLON:
            if ch != ":":
                raise Fail("expected ':'")
            self._emit(ch)
            self.expect = VALUE
        else:
            self._after_member(ch)

    def _value_start(self, ch: str) -> None:
        if ch == "]" and self.expect == VALUE_OR_CLOSE:
            self._close("[", ch)
        elif ch in "{[":
            self.stack += ch
            self.expect = KEY_OR_CLOSE if ch == "{" else VALUE_OR_CLOSE
            self._emit(ch)
        elif ch == '"':
            self._open_string(key=False)
        elif ch in _TOKEN_CHARS:
            self._token = ch
            self._held += ch
        else:
            raise Fail("expected a value")

    def _open_string(self, key: bool) -> None:
        self.in_string = True
        self.is_key = key
        self._emit('"')

    def _after_member(self, ch: str) -> None:
        if ch == ",":
            self._emit(ch)
            self.expect = KEY if self.stack.endswith("{") else VALUE
        elif ch in "}]":
            self._close("{" if ch == "}" else "[", ch)
        else:
            raise Fail("expected ',' or a closing bracket")

    def _close(self, opener: str, ch: str) -> None:
        if not self.stack.endswith(opener):
            raise Fail("mismatched bracket")
        self.stack = self.stack[:-1]
        self._emit(ch)
        self._after_value(key=False)

    def _after_value(self, key: bool) -> None:
        if key:
            self.expect = COLON
        elif self.stack:
            self.expect = COMMA_OR_CLOSE
        else:
            self.done = True

    def _end_token(self) -> None:
        if not _TOKEN.fullmatch(self._token):
            raise Fail(f"bad JSON token {self._token!r}")
        self._token = ""
        self._after_value(key=False)


def read_json(src: Source, sink: Callable[[str], None] | None = None,
              value: JsonValue | None = None) -> Generator[None, None, str]:
    """Reads one JSON value from src; returns its text. ``sink`` gets the safe pieces
    as they come (for streaming)."""
    value = value or JsonValue()
    while not value.done:
        ch = yield from peek(src)
        if not ch:
            value.finish()
            if not value.done:
                raise Fail("output ended inside a JSON value")
        elif value.push(ch):
            src.pos += 1
        if sink is not None:
            piece = value.take()
            if piece:
                sink(piece)
    value.take()
    return value.text
