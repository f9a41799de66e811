"""GBNF building blocks for the JSON Schema converter (``json_grammar``): literals,
character classes, repeats, integer and decimal ranges, and a regex subset.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Protocol

MAX_REPEAT = 2000  # llama.cpp makes a larger {m,n} bound unbounded
MAX_DIGITS = 16
MAX_INT = 10**MAX_DIGITS - 1
SEPARATOR = '"," ws'


class RuleSink(Protocol):
    """Where a translator puts the rules it needs: ``add`` returns the rule's name."""

    def add(self, hint: str, body: str) -> str: ...


_CLASS_SPECIAL = "\\]-^["  # characters a GBNF class needs escaped
_REGEX_COUNT = re.compile(r"\{(\d+)(,(\d*))?\}")
# Characters that a JSON string holds only as escapes.
_UNSAFE_RANGES = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]
_UNSAFE_POINTS = [*range(0x20), 0x22, 0x5C, 0x7F]
_SHORTHANDS = {
    "d": [(0x30, 0x39)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "s": [(0x09, 0x0D), (0x20, 0x20)],
}
_ESCAPED_CODES = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "0": 0x00}

class RegexTranslator:
    """The subset of a regex that GBNF can say, over the text of a JSON string.

    The grammar matches the whole string; an unanchored pattern also matches longer
    strings, so this is still a subset of what the pattern accepts.
    """

    def __init__(self, pattern: str, rules: RuleSink, hint: str,
                 fail: Callable[[str], Exception]) -> None:
        self.rules, self.hint, self.fail = rules, hint, fail
        start = 1 if pattern.startswith("^") else 0
        anchored_end = pattern.endswith("$") and len(pattern) > start and \
            _even_backslashes_before(pattern, len(pattern) - 1)
        end = len(pattern) - 1 if anchored_end else len(pattern)
        self.text, self.pos = pattern[start:end], 0

    def run(self) -> str:
        expression = self._alternatives()
        if self.pos < len(self.text):
            raise self.fail(f"unmatched ')' at {self.pos}")
        return group(expression)

    def _peek(self, ahead: int = 0) -> str | None:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else None

    def _take(self) -> str:
        char = self._peek()
        if char is None:
            raise self.fail("unexpected end")
        self.pos += 1
        return char

    def _alternatives(self) -> str:
        branches = [self._sequence()]
        while self._peek() == "|":
            self.pos += 1
            branches.append(self._sequence())
        return " | ".join(branches)

    def _sequence(self) -> str:
        items = []
        while self._peek() not in (None, "|", ")"):
            items.append(self._quantified(*self._atom()))
        return seq(*items)

    def _atom(self) -> tuple[str, bool]:
        """An expression, and whether it is a single symbol (so it repeats as a whole)."""
        char = self._take()
        if char == "(":
            return self._group(), False
        if char == "[":
            return _char_set(*self._class())
        if char == ".":
            return "regex-dot", True
        if char == "\\":
            return self._escape()
        if char in "^$":
            raise self.fail("anchors are supported only at the start and the end")
        if char in "*+?" or (char == "{" and _REGEX_COUNT.match(self.text, self.pos - 1)):
            raise self.fail(f"nothing to repeat at {self.pos - 1}")
        return _json_char(ord(char)), True

    def _group(self) -> str:
        if self._peek() == "?":
            rest = self.text[self.pos:]
            if rest.startswith("?:"):
                self.pos += 2
            elif re.match(r"\?P?<[A-Za-z_]\w*>", rest):
                self.pos = self.text.index(">", self.pos) + 1
            else:
                raise self.fail("lookarounds and inline flags are not supported")
        inner = self._alternatives()
        if self._peek() != ")":
            raise self.fail("missing ')'")
        self.pos += 1
        return f"( {inner} )"

    def _quantified(self, expression: str, single: bool) -> str:
        char = self._peek()
        counts = {"*": (0, None), "+": (1, None), "?": (0, 1)}
        if char in counts:
            self.pos += 1
            low, high = counts[char]
        elif char == "{" and (match := _REGEX_COUNT.match(self.text, self.pos)):
            self.pos = match.end()
            low = high = int(match.group(1))
            if match.group(2) is not None:
                high = int(match.group(3)) if match.group(3) else None
        else:
            return expression
        if self._peek() == "?":  # lazy or greedy, the strings that match are the same
            self.pos += 1
        if high is not None and high < low:
            raise self.fail("a {m,n} count with n below m")
        if low > MAX_REPEAT:
            raise self.fail(f"counts above {MAX_REPEAT} are not supported")
        if not single:
            # llama.cpp multiplies nested counts within one rule; a rule reference resets that.
            expression = self.rules.add(self.hint, expression)
        return repeat(expression, low, None if high is None else min(high, MAX_REPEAT))

    def _escape(self) -> tuple[str, bool]:
        char = self._take()
        if char in _SHORTHANDS:
            return _char_set(_SHORTHANDS[char], negated=False)
        if char.lower() in _SHORTHANDS and char.isupper():
            return _char_set(_SHORTHANDS[char.lower()], negated=True, ascii_only=True)
        return _json_char(self._escaped_code(char, in_class=False)), True

    def _escaped_code(self, char: str, in_class: bool) -> int:
        if char in _ESCAPED_CODES:
            return _ESCAPED_CODES[char]
        if char == "b" and in_class:
            return 0x08
        if char in "xu":
            digits = self.text[self.pos:self.pos + (2 if char == "x" else 4)]
            if not re.fullmatch(r"[0-9a-fA-F]{2}" if char == "x" else r"[0-9a-fA-F]{4}", digits):
                raise self.fail(f"bad '\\{char}' escape")
            self.pos += len(digits)
            return int(digits, 16)
        if char.isalnum() or not char.isascii():
            raise self.fail(f"'\\{char}' is not supported")
        return ord(char)

    def _class(self) -> tuple[list[tuple[int, int]], bool, bool]:
        """A bracket expression: its ranges, whether negated, and whether shorthands occur."""
        negated = self._peek() == "^"
        self.pos += negated
        if self._peek() == "]":
            raise self.fail("empty character classes are not supported")
        ranges: list[tuple[int, int]] = []
        shorthand = False
        while (char := self._take()) != "]":
            if char == "\\" and self._peek() in _SHORTHANDS:
                ranges.extend(_SHORTHANDS[self._take()])
                shorthand = True
                continue
            low = self._class_char(char)
            high = low
            if self._peek() == "-" and self._peek(1) not in (None, "]"):
                self.pos += 1
                high = self._class_char(self._take())
                if high < low:
                    raise self.fail("a character range runs backwards")
            ranges.append((low, high))
        return ranges, negated, shorthand

    def _class_char(self, char: str) -> int:
        return self._escaped_code(self._take(), in_class=True) if char == "\\" else ord(char)


def _char_set(ranges: list[tuple[int, int]], negated: bool,
              ascii_only: bool = False) -> tuple[str, bool]:
    """GBNF for one character of a regex class, as it appears inside a JSON string."""
    if negated and ascii_only:
        # Python's \D, \W and [^\d] also refuse non-ASCII digits and letters: stay in ASCII.
        ranges, negated = _subtract([(0x20, 0x7E)], ranges), False
    if negated:
        alternatives = [_gbnf_class(ranges + _UNSAFE_RANGES, negated=True)]
        points = [p for p in (0x22, 0x5C) if not _covers(ranges, p)]
    else:
        safe = _subtract(ranges, _UNSAFE_RANGES)
        alternatives = [_gbnf_class(safe, negated=False)] if safe else []
        points = [p for p in _UNSAFE_POINTS if _covers(ranges, p)]
    alternatives += [literal(json.dumps(chr(p))[1:-1]) for p in points]
    if len(alternatives) == 1:
        return alternatives[0], True
    return f"( {' | '.join(alternatives)} )", False


def _subtract(ranges: list[tuple[int, int]],
              removed: list[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces = list(ranges)
    for cut_low, cut_high in removed:
        kept = []
        for low, high in pieces:
            if cut_high < low or cut_low > high:
                kept.append((low, high))
                continue
            if low < cut_low:
                kept.append((low, cut_low - 1))
            if high > cut_high:
                kept.append((cut_high + 1, high))
        pieces = kept
    return pieces


def _covers(ranges: list[tuple[int, int]], point: int) -> bool:
    return any(low <= point <= high for low, high in ranges)


def _even_backslashes_before(text: str, index: int) -> bool:
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 0


# ---- numbers


def int_range(low: int, high: int) -> str:
    """The integers low..high in JSON, without leading zeros or '-0'."""
    parts = []
    if low < 0:
        parts.append(seq('"-"', group(_uint_range(max(-high, 1), -low))))
    if high >= 0:
        parts.append(_uint_range(max(low, 0), high))
    return " | ".join(parts)


def decimal_range(low: int, high: int | None) -> str:
    """Non-negative decimals from ``low`` up to ``high`` (unbounded if None)."""
    if high is None:
        return f"{group(_uint_range(low, MAX_INT))} fraction?"
    if low == high:
        return f'"{high}"'
    return f"{group(_uint_range(low, high - 1))} fraction? | \"{high}\""


def _uint_range(low: int, high: int) -> str:
    """The integers low..high (0 <= low <= high) as alternatives, one per digit count."""
    parts, full_lengths = [], []
    for length in range(len(str(low)), len(str(high)) + 1):
        first = max(low, 10 ** (length - 1) if length > 1 else 0)
        last = min(high, 10**length - 1)
        if length > 1 and first == 10 ** (length - 1) and last == 10**length - 1:
            full_lengths.append(length)
        else:
            parts.append(_same_length(str(first), str(last)))
    if full_lengths:
        parts.append(seq("[1-9]", repeat("[0-9]", full_lengths[0] - 1, full_lengths[-1] - 1)))
    return " | ".join(parts)


def _same_length(low: str, high: str) -> str:
    """Digit strings from ``low`` to ``high``, which have the same length."""
    if low == high:
        return f'"{low}"' if low else ""
    if low[0] == high[0]:
        return seq(f'"{low[0]}"', group(_same_length(low[1:], high[1:])))
    rest = len(low) - 1
    low_whole, high_whole = low[1:] == "0" * rest, high[1:] == "9" * rest
    first = int(low[0]) + (not low_whole)
    last = int(high[0]) - (not high_whole)
    parts = [] if low_whole else [seq(f'"{low[0]}"', group(_same_length(low[1:], "9" * rest)))]
    if first <= last:
        parts.append(seq(_digit_class(str(first), str(last)), repeat("[0-9]", rest, rest)))
    if not high_whole:
        parts.append(seq(f'"{high[0]}"', group(_same_length("0" * rest, high[1:]))))
    return " | ".join(parts)


def _digit_class(low: str, high: str) -> str:
    return f'"{low}"' if low == high else f"[{low}-{high}]"


# ---- small helpers


def comma_list(item: str, low: int, high: int | None) -> str:
    """``item`` low..high times, comma-separated, each followed by whitespace."""
    if high == 0:
        return ""
    more = repeat(f"( {SEPARATOR} {item} ws )", max(low - 1, 0),
                   None if high is None else high - 1)
    body = seq(item, "ws", more)
    return body if low > 0 else f"( {body} )?"


def repeat(symbol: str, low: int, high: int | None) -> str:
    if high == 0:
        return ""
    if high is None:
        return {0: f"{symbol}*", 1: f"{symbol}+"}.get(low, f"{symbol}{{{low},}}")
    if low == high:
        return symbol if low == 1 else f"{symbol}{{{low}}}"
    return f"{symbol}?" if (low, high) == (0, 1) else f"{symbol}{{{low},{high}}}"


def seq(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def group(expression: str) -> str:
    return f"( {expression} )" if "|" in expression else expression


def literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    return '"' + "".join(_gbnf_char(ord(c), special='"\\') for c in text) + '"'


def _gbnf_class(ranges: list[tuple[int, int]], negated: bool) -> str:
    members = "".join(_gbnf_char(low, _CLASS_SPECIAL) +
                      ("-" + _gbnf_char(high, _CLASS_SPECIAL) if high != low else "")
                      for low, high in ranges)
    return f"[{'^' if negated else ''}{members}]"


def _gbnf_char(point: int, special: str) -> str:
    char = chr(point)
    if 0x20 <= point < 0x7F and char not in special:
        return char
    if char in '"\\':
        return "\\" + char
    if point <= 0xFF:
        return f"\\x{point:02X}"
    return f"\\u{point:04X}" if point <= 0xFFFF else f"\\U{point:08X}"


def _json_char(point: int) -> str:
    """A literal for one character as a JSON string spells it."""
    return literal(json.dumps(chr(point), ensure_ascii=False)[1:-1])
