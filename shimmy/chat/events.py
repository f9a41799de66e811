"""What a chat run hands its API translator, piece by piece.

A run yields, in order: any mix of ``TextDelta`` and ``ThinkingDelta``; for each tool
call, ``ToolCallStart``, zero or more ``ToolCallDelta`` whose ``arguments`` concatenate to
the call's JSON arguments text, then ``ToolCallEnd``; finally one ``Finish``. Tool calls
are numbered from 0 in the order they start and never interleave.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass


def new_call_id() -> str:
    """A tool call's id; translators may re-prefix it (Anthropic's ``toolu_``)."""
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    logprobs: list | None = None  # the engine's entries for these tokens, when asked for


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    arguments: str  # a piece of the arguments' JSON text


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    index: int
    arguments: str  # the whole arguments text: a JSON object


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # of prompt_tokens, reused from cells already computed


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str  # "stop", "length" or "tool_calls"
    stop_sequence: str | None  # the client's stop string that ended it, if one did
    usage: Usage


ParsedEvent = TextDelta | ThinkingDelta | ToolCallStart | ToolCallDelta | ToolCallEnd
Event = ParsedEvent | Finish
