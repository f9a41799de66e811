"""``OutputParser``: model output, piece by piece, to text, thinking and tool-call events."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from shimmy.chat.events import (
    ParsedEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
)
from shimmy.chat.syntax.detect import SYNTAXES
from shimmy.chat.syntax.harmony import HarmonyScanner
from shimmy.chat.syntax.json_calls import (
    DeepSeekScanner,
    ForcedScanner,
    GraniteScanner,
    HermesScanner,
    JsonScanner,
    KimiScanner,
    Llama3Scanner,
    MistralScanner,
)
from shimmy.chat.syntax.scanner import CallScanner
from shimmy.chat.syntax.thinking import ThinkingSplitter
from shimmy.chat.syntax.xml_calls import GlmScanner, Qwen3CoderScanner

_SCANNERS: dict[str, type[CallScanner]] = {
    "hermes": HermesScanner,
    "qwen3_coder": Qwen3CoderScanner,
    "glm": GlmScanner,
    "llama3": Llama3Scanner,
    "mistral": MistralScanner,
    "deepseek_v3": DeepSeekScanner,
    "deepseek_r1": DeepSeekScanner,
    "granite": GraniteScanner,
    "kimi_k2": KimiScanner,
    "json": JsonScanner,
}


class _TextOnly(CallScanner):
    """No tool calls to look for: all content is text."""

    def call_body(self, opener: str):  # pragma: no cover - no openers
        raise NotImplementedError
        yield


class OutputParser:
    """Turns generated text, fed in pieces of any size, into events.

    ``tool_names`` None or empty: no tool-call parsing (thinking is still split out).
    ``thinking`` False: no thinking parsing (think tags stay text). ``open_thinking``: the
    prompt ended inside a thinking block. ``forced``: the output is grammar-constrained
    ``{"name": ..., "arguments": {...}}`` (or an array of those), after any thinking.
    ``parallel`` False changes nothing here: a model that writes a second call anyway gets
    it reported as a call, since dropping it would lose output and keeping its raw syntax
    as text would show markup; the grammar or the translator is the place to stop it.
    ``tool_schemas`` (name -> JSON schema of its parameters) lets the tag-based families
    tell string arguments from others.
    """

    def __init__(self, syntax: str, tool_names: Collection[str] | None, *,
                 thinking: bool = True, open_thinking: bool = False, forced: bool = False,
                 parallel: bool = True,
                 tool_schemas: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        if syntax not in SYNTAXES:
            raise ValueError(f"unknown syntax {syntax!r}; one of {', '.join(SYNTAXES)}")
        self.syntax = syntax
        self.parallel = parallel
        self._thinking: ThinkingSplitter | None = None
        if syntax == "harmony" and not forced:
            self._scanner: CallScanner = HarmonyScanner(tool_names, tool_schemas,
                                                        thinking=thinking)
            return
        if thinking:
            self._thinking = ThinkingSplitter(open_thinking=open_thinking,
                                              response_tags=syntax == "granite")
        if forced:
            self._scanner = ForcedScanner(tool_names, tool_schemas)
        elif tool_names:
            self._scanner = _SCANNERS[syntax](tool_names, tool_schemas)
        else:
            self._scanner = _TextOnly(None)

    @property
    def calls(self) -> int:
        """How many tool calls have started."""
        return self._scanner.calls

    def feed(self, text: str) -> list[ParsedEvent]:
        if self._thinking is None:
            return _merged(self._scanner.feed(text))
        return _merged(self._route(self._thinking.feed(text), final=False))

    def finish(self) -> list[ParsedEvent]:
        if self._thinking is None:
            return _merged(self._scanner.finish())
        return _merged(self._route(self._thinking.finish(), final=True))

    def _route(self, pieces: list[tuple[bool, str]], final: bool) -> list[ParsedEvent]:
        events: list[ParsedEvent] = []
        for is_thinking, text in pieces:
            if is_thinking:
                events.append(ThinkingDelta(text))
            else:
                events.extend(self._scanner.feed(text))
        if final:
            events.extend(self._scanner.finish())
        return events


def _merged(events: list[ParsedEvent]) -> list[ParsedEvent]:
    """Joins neighbouring pieces of the same kind (fewer, larger deltas)."""
    out: list[ParsedEvent] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, TextDelta) and isinstance(last, TextDelta) \
                and event.logprobs is None and last.logprobs is None:
            out[-1] = TextDelta(last.text + event.text)
        elif isinstance(event, ThinkingDelta) and isinstance(last, ThinkingDelta):
            out[-1] = ThinkingDelta(last.text + event.text)
        elif isinstance(event, ToolCallDelta) and isinstance(last, ToolCallDelta) \
                and event.index == last.index:
            out[-1] = ToolCallDelta(last.index, last.arguments + event.arguments)
        else:
            out.append(event)
    return out
