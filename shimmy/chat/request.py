"""The one chat request every API translates into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shimmy.engine.scheduler import Sampling


@dataclass(slots=True)
class ChatRequest:
    """A chat turn to generate, whatever API asked for it.

    ``messages`` are OpenAI-style chat messages as ``normalize_messages`` takes them:
    roles system/developer/user/assistant/tool, an assistant's ``tool_calls``
    (``{"id", "type": "function", "function": {"name", "arguments"}}``, arguments as JSON
    text or an object) and ``reasoning_content``, a tool message's ``tool_call_id``.
    ``tools`` are OpenAI function tools (``{"type": "function", "function": {"name",
    "description", "parameters"}}``).
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "auto"  # "auto", "none", "required", or the name of one tool
    parallel_tool_calls: bool = True
    max_tokens: int | None = None  # None: what the context leaves; more than that: clamped
    sampling: Sampling = field(default_factory=Sampling)
    # {"type": "json_object"} or {"type": "json_schema", "schema": {...}}
    response_format: dict[str, Any] | None = None
    thinking: bool | None = None  # None: the template's default
    reasoning_effort: str | None = None  # "low", "medium", "high" where the template takes it
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)  # the client's own stop strings
    prefill: str = ""  # assistant text that the answer continues (Anthropic's last turn)
    logprobs: int = -1  # -1: none; else log-probabilities with this many alternatives
    ignore_eos: bool = False
    session: str | None = None  # a conversation's key, to keep it on the slot with its cells
