"""Which family a chat template writes its tool calls and thinking in."""

from __future__ import annotations

SYNTAXES: tuple[str, ...] = (
    "hermes", "qwen3_coder", "glm", "llama3", "mistral", "harmony", "deepseek_v3",
    "deepseek_r1", "granite", "kimi_k2", "json",
)

# (family, markers that must all appear in the template), first match wins: the more
# specific families come before the ones whose markers they share (<tool_call>).
_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("harmony", ("<|channel|>", "<|message|>")),
    ("kimi_k2", ("<|tool_calls_section_begin|>",)),
    ("deepseek_r1", ("<｜tool▁sep｜>", "```json")),
    ("deepseek_v3", ("<｜tool▁sep｜>",)),
    ("glm", ("<tool_call>", "<arg_key>")),
    ("qwen3_coder", ("<function=", "<parameter=")),
    ("mistral", ("[TOOL_CALLS]",)),
    ("granite", ("<|tool_call|>",)),
    ("hermes", ("<tool_call>",)),
    ("llama3", ("<|python_tag|>",)),
    ("llama3", ("<|start_header_id|>", "tools")),
)


def detect_syntax(template_source: str | None) -> str:
    """The family from a GGUF's Jinja chat template; "json" when none is recognised."""
    if not template_source:
        return "json"
    for family, markers in _SIGNATURES:
        if all(marker in template_source for marker in markers):
            return family
    return "json"


def needs_special_tokens(syntax: str) -> bool:
    """Whether the engine must render control tokens as text for this family's markers
    (harmony's <|channel|>, <|python_tag|>, [TOOL_CALLS], DeepSeek's and Kimi's call
    tokens, ...). Only the bare-JSON family has none; where a family's markers happen to be
    ordinary text in a given vocabulary, rendering control tokens changes nothing."""
    return syntax != "json"


def opens_thinking(template_source: str | None, prompt_text: str) -> bool:
    """Whether the rendered prompt ends inside a thinking block (DeepSeek R1, QwQ, GLM 4.7
    and others end their generation prompt with ``<think>``), so the output starts as
    thinking. ``<think></think>``, the closed block some templates write to switch
    thinking off, does not count."""
    return prompt_text.rstrip().endswith("<think>")
