"""Families whose calls spell each argument out in tags: Qwen3-Coder (also Qwen3.5) and
GLM 4.5 / 4.6 / 4.7. The arguments object is built as the tags close: ``{"key": value``
per argument, ``}`` at the end. A value is JSON where the tool's schema says the argument
is no string and the text parses as JSON, else a JSON string."""

from __future__ import annotations

import json
from typing import Any

from shimmy.chat.syntax.scanner import NAME_LIMIT, CallScanner, Reading
from shimmy.chat.syntax.source import Fail, accept, accept_any, expect, read_until, skip_ws


class XmlCallScanner(CallScanner):
    def add_argument(self, function: str, key: str, raw: str) -> None:
        assert self.call is not None
        opening = "{" if not self.call.arguments else ", "
        value = _value_json(self._argument_schema(function, key), raw)
        self.call_delta(f"{opening}{json.dumps(key, ensure_ascii=False)}: {value}")
        self.call.closing = "}"

    def close_arguments(self) -> None:
        assert self.call is not None
        self.call_delta("}" if self.call.arguments else "{}")
        self.end_call()

    def _argument_schema(self, function: str, key: str) -> dict[str, Any] | None:
        schema = self.schemas.get(function)
        if not isinstance(schema, dict):
            return None
        properties = schema.get("properties")
        found = properties.get(key) if isinstance(properties, dict) else None
        return found if isinstance(found, dict) else None


def _value_json(schema: dict[str, Any] | None, raw: str) -> str:
    types = (schema or {}).get("type")
    types = types if isinstance(types, list) else [types]
    if "string" not in types:
        try:
            value = json.loads(raw, parse_constant=_no_constant)
        except ValueError:
            pass
        else:
            return json.dumps(value, ensure_ascii=False)
    return json.dumps(raw, ensure_ascii=False)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is no JSON")


class Qwen3CoderScanner(XmlCallScanner):
    """``<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n</function>
    \\n</tool_call>``; the first call may come without its ``<tool_call>``."""

    anywhere = ("<tool_call>", "<function=")

    def call_body(self, opener: str) -> Reading:
        src = self.src
        if opener == "<tool_call>":
            yield from skip_ws(src)
            yield from expect(src, "<function=")
        name, _ = yield from read_until(src, (">",), limit=NAME_LIMIT)
        name = name.strip()
        self.start_call(name)
        while True:
            yield from skip_ws(src)
            tag = yield from accept_any(src, ("<parameter=", "</function>"))
            if tag is None:
                raise Fail("expected <parameter= or </function>")
            if tag == "</function>":
                break
            key, _ = yield from read_until(src, (">",), limit=NAME_LIMIT)
            value, _ = yield from read_until(src, ("</parameter>",))
            self.add_argument(name, key.strip(), _strip_one_newline(value))
        self.close_arguments()
        yield from skip_ws(src)
        yield from accept(src, "</tool_call>")


def _strip_one_newline(value: str) -> str:
    value = value.removeprefix("\n")
    return value.removesuffix("\n")


class GlmScanner(XmlCallScanner):
    """``<tool_call>NAME\\n<arg_key>KEY</arg_key>\\n<arg_value>VALUE</arg_value>\\n
    </tool_call>`` (GLM 4.7 leaves out the newlines)."""

    anywhere = ("<tool_call>",)

    def call_body(self, opener: str) -> Reading:
        src = self.src
        name, tag = yield from read_until(src, ("\n", "<arg_key>", "</tool_call>"),
                                          limit=NAME_LIMIT)
        name = name.strip()
        self.start_call(name)
        while tag != "</tool_call>":
            if tag != "<arg_key>":
                yield from skip_ws(src)
                tag = yield from accept_any(src, ("<arg_key>", "</tool_call>"))
                if tag is None:
                    raise Fail("expected <arg_key> or </tool_call>")
                continue
            key, _ = yield from read_until(src, ("</arg_key>",), limit=NAME_LIMIT)
            yield from skip_ws(src)
            yield from expect(src, "<arg_value>")
            value, _ = yield from read_until(src, ("</arg_value>",))
            self.add_argument(name, key.strip(), value)
            tag = ""
        self.close_arguments()
