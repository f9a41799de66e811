"""Families whose calls carry JSON: Hermes/Qwen, bare JSON, Llama 3.x, Mistral, Granite,
DeepSeek V3/R1/V3.1 and Kimi K2."""

from __future__ import annotations

import ast
import json
import re

from shimmy.chat.syntax.scanner import NAME_LIMIT, CallScanner, Reading
from shimmy.chat.syntax.source import (
    Fail,
    accept,
    accept_any,
    expect,
    peek,
    read_until,
    skip_ws,
)

_NAME_CHARS = re.compile(r"[\w.\-]")


class HermesScanner(CallScanner):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, as often as needed
    (Hermes 2 Pro / 3, Qwen 2.5, Qwen3, Granite 4)."""

    anywhere = ("<tool_call>",)

    def call_body(self, opener: str) -> Reading:
        yield from self.envelope()
        yield from skip_ws(self.src)
        yield from accept(self.src, "</tool_call>")


class JsonScanner(CallScanner):
    """What templates without tools are asked for: a bare ``{"name", "arguments"}`` object
    or an array of them, as the whole answer (a ```json fence around it is tolerated)."""

    leading = ("{", "[", "```json")

    def call_body(self, opener: str) -> Reading:
        if opener == "```json":
            yield from self.envelopes()
            yield from skip_ws(self.src)
            yield from expect(self.src, "```")
            return
        self.src.pos -= 1  # the bracket is the value's own
        yield from self.envelopes()


class ForcedScanner(JsonScanner):
    """Grammar-constrained output: the call object (or an array of them), nothing else."""

    leading = ("{", "[")


class Llama3Scanner(CallScanner):
    """Llama 3.x: a bare ``{"name": ..., "parameters": {...}}`` answer (calls separated
    by ``;``), or ``<|python_tag|>`` followed by such an object or by a built-in tool's
    ``name.call(arg="value")``."""

    leading = ("{",)
    anywhere = ("<|python_tag|>",)

    def call_body(self, opener: str) -> Reading:
        src = self.src
        if opener == "{":
            src.pos -= 1
        else:
            yield from skip_ws(src)
            if (yield from peek(src)) != "{":
                yield from self._python_call()
                return
        yield from self.envelope()
        yield from skip_ws(src)
        yield from accept(src, ";")

    def _python_call(self) -> Reading:
        src = self.src
        head, _ = yield from read_until(src, ("(",), limit=NAME_LIMIT)
        tool = head.strip().removesuffix(".call")
        if not re.fullmatch(r"\w+", tool):
            raise Fail("no python-style call")
        self.start_call(tool)
        inner = yield from _balanced_until_close(src)
        self.call_delta(_python_arguments(inner))
        self.end_call()


def _balanced_until_close(src) -> Reading:
    """Text up to the ``)`` that closes an argument list (consumed)."""
    start, depth, quote = src.pos, 0, ""
    while True:
        ch = yield from peek(src)
        if not ch:
            raise Fail("output ended inside a call")
        src.pos += 1
        if quote:
            if ch == "\\":
                src.pos += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                return src.text[start:src.pos - 1]
            depth -= 1


def _python_arguments(inner: str) -> str:
    try:
        call = ast.parse(f"f({inner})", mode="eval").body
        assert isinstance(call, ast.Call) and not call.args
        values = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
        return json.dumps(values, ensure_ascii=False, allow_nan=False)
    except (SyntaxError, ValueError, AssertionError, TypeError) as error:
        raise Fail("unreadable python-style arguments") from error


class MistralScanner(CallScanner):
    """``[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}]`` (Nemo and older) and
    ``[TOOL_CALLS]name[ARGS]{...}`` / ``[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}`` (Small 3.2,
    Devstral, Magistral), one marker per call."""

    anywhere = ("[TOOL_CALLS]",)

    def call_body(self, opener: str) -> Reading:
        src = self.src
        yield from skip_ws(src)
        if (yield from peek(src)) in ("[", "{"):
            yield from self.envelopes()
            return
        name = yield from read_name(src)
        marker = yield from accept_any(src, ("[ARGS]", "[CALL_ID]"))
        if marker is None:
            raise Fail("expected [ARGS]")
        if marker == "[CALL_ID]":
            yield from read_until(src, ("[ARGS]",), limit=NAME_LIMIT)
        self.start_call(name)
        yield from self.stream_arguments()
        self.end_call()


def read_name(src) -> Reading:
    """A function name: word characters, dots and dashes."""
    start = src.pos
    while True:
        ch = yield from peek(src)
        if not ch or not _NAME_CHARS.match(ch) or src.pos - start > NAME_LIMIT:
            break
        src.pos += 1
    if src.pos == start or not ch or src.pos - start > NAME_LIMIT:
        raise Fail("no function name")
    return src.text[start:src.pos]


class GraniteScanner(CallScanner):
    """Granite 3.x: ``<|tool_call|>[{"name": ..., "arguments": {...}}, ...]`` (Phi-4-mini's
    closing ``<|/tool_call|>`` is accepted too)."""

    anywhere = ("<|tool_call|>",)

    def call_body(self, opener: str) -> Reading:
        yield from self.envelopes()
        yield from skip_ws(self.src)
        yield from accept(self.src, "<|/tool_call|>")


DS_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
DS_CALLS_END = "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN = "<｜tool▁call▁begin｜>"
DS_CALL_END = "<｜tool▁call▁end｜>"
DS_SEP = "<｜tool▁sep｜>"


class DeepSeekScanner(CallScanner):
    """DeepSeek V3 / R1:
    ``<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}```<｜tool▁call▁end｜>``;
    V3.1: ``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>``;
    both inside ``<｜tool▁calls▁begin｜>…<｜tool▁calls▁end｜>``."""

    anywhere = (DS_CALLS_BEGIN, DS_CALL_BEGIN)

    def call_body(self, opener: str) -> Reading:
        src = self.src
        before = self.calls
        if opener == DS_CALL_BEGIN:
            yield from self._call()
        while True:
            yield from skip_ws(src)
            marker = yield from accept_any(src, (DS_CALL_BEGIN, DS_CALLS_END))
            if marker != DS_CALL_BEGIN:
                if marker is None and self.calls == before:
                    raise Fail("no call in the calls block")
                return
            yield from self._call()

    def _call(self) -> Reading:
        src = self.src
        head, _ = yield from read_until(src, (DS_SEP,), limit=NAME_LIMIT)
        fenced = head.strip() == "function"
        if fenced:
            name, marker = yield from read_until(src, ("\n", "```"), limit=NAME_LIMIT)
            if marker == "```":
                src.pos -= len(marker)
            self.start_call(name.strip())
            yield from skip_ws(src)
            if not (yield from accept(src, "```json")):
                yield from accept(src, "```")
        else:
            self.start_call(head.strip())
        yield from self.stream_arguments()
        yield from skip_ws(src)
        if fenced:
            yield from accept(src, "```")
            yield from skip_ws(src)
        yield from expect(src, DS_CALL_END)
        self.end_call()


class KimiScanner(CallScanner):
    """Kimi K2: ``<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
    <|tool_call_argument_begin|>{...}<|tool_call_end|>…<|tool_calls_section_end|>``."""

    anywhere = ("<|tool_calls_section_begin|>",)

    def call_body(self, opener: str) -> Reading:
        src = self.src
        before = self.calls
        while True:
            yield from skip_ws(src)
            marker = yield from accept_any(
                src, ("<|tool_call_begin|>", "<|tool_calls_section_end|>"))
            if marker != "<|tool_call_begin|>":
                if marker is None and self.calls == before:
                    raise Fail("no call in the section")
                return
            ident, _ = yield from read_until(src, ("<|tool_call_argument_begin|>",),
                                             limit=NAME_LIMIT)
            name = re.sub(r":\d+$", "", ident.strip()).removeprefix("functions.")
            self.start_call(name)
            yield from self.stream_arguments()
            yield from skip_ws(src)
            yield from expect(src, "<|tool_call_end|>")
            self.end_call()
