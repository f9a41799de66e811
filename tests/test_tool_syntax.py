"""Streaming output parsers (shimmy.chat.syntax): detection from real templates, and real
model output of every family parsed the same whichever pieces it arrives in."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from shimmy.chat.events import (
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from shimmy.chat.syntax import (
    SYNTAXES,
    OutputParser,
    detect_syntax,
    needs_special_tokens,
    opens_thinking,
)

DATA = Path(__file__).parent / "data"
FIXTURE = json.loads((DATA / "tool_outputs" / "cases.json").read_text(encoding="utf-8"))
TOOLS = FIXTURE["tools"]
CASES = {case["name"]: case for case in FIXTURE["cases"]}


def run(parser: OutputParser, pieces: list[str]) -> list:
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish()


def normalized(events: list) -> list:
    """Events with neighbouring deltas merged and ids blanked, for comparing runs."""
    out: list = []
    for event in events:
        if isinstance(event, ToolCallStart):
            event = ToolCallStart(event.index, "", event.name)
        last = out[-1] if out else None
        if type(event) is type(last) and isinstance(event, TextDelta | ThinkingDelta):
            out[-1] = type(event)(last.text + event.text)
        elif isinstance(event, ToolCallDelta) and isinstance(last, ToolCallDelta):
            out[-1] = ToolCallDelta(event.index, last.arguments + event.arguments)
        else:
            out.append(event)
    return out


def splits(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(text):
        size = rng.randint(1, 6)
        pieces.append(text[at:at + size])
        at += size
    return pieces


def summary(events: list) -> dict:
    """Text, thinking and calls (name, parsed arguments); checks each call's shape."""
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    calls, open_calls = [], {}
    for event in events:
        if isinstance(event, ToolCallStart):
            assert event.index == len(calls) + len(open_calls) and not open_calls
            assert event.id.startswith("call_")
            open_calls[event.index] = (event.name, "")
        elif isinstance(event, ToolCallDelta):
            name, arguments = open_calls[event.index]
            open_calls[event.index] = (name, arguments + event.arguments)
        elif isinstance(event, ToolCallEnd):
            name, arguments = open_calls.pop(event.index)
            assert arguments == event.arguments
            value = json.loads(event.arguments)
            assert isinstance(value, dict)
            calls.append([name, value])
    assert not open_calls
    return {"text": text, "thinking": thinking, "calls": calls}


def parser_for(case: dict, **overrides) -> OutputParser:
    options = {**case["options"], **overrides}
    return OutputParser(case["syntax"], list(TOOLS), tool_schemas=TOOLS, **options)


# -- detection

TEMPLATES = {
    "qwen2.5.jinja": "hermes", "qwen3.jinja": "hermes", "hermes3.jinja": "hermes",
    "granite4.0.jinja": "hermes", "qwen3-coder.jinja": "qwen3_coder",
    "qwen3.5.jinja": "qwen3_coder", "glm4.6.jinja": "glm", "glm4.7-flash.jinja": "glm",
    "llama3.1.jinja": "llama3", "llama3.2.jinja": "llama3", "mistral-nemo.jinja": "mistral",
    "mistral-small-3.2.jinja": "mistral", "devstral-small.jinja": "mistral",
    "gpt-oss.jinja": "harmony", "deepseek-r1.jinja": "deepseek_r1",
    "deepseek-r1-distill-qwen.jinja": "deepseek_r1", "deepseek-v3.1.jinja": "deepseek_v3",
    "granite3.3.jinja": "granite", "kimi-k2.jinja": "kimi_k2",
    "kimi-k2-thinking.jinja": "kimi_k2", "gemma2.jinja": "json", "phi3.5.jinja": "json",
    "command-r-gguf.jinja": "json",
}


@pytest.mark.parametrize("filename, syntax", sorted(TEMPLATES.items()))
def test_detects_family_from_real_template(filename, syntax):
    source = (DATA / "templates" / filename).read_text(encoding="utf-8")
    assert detect_syntax(source) == syntax


def test_detection_without_template_is_json():
    assert detect_syntax(None) == "json"
    assert detect_syntax("") == "json"
    assert set(TEMPLATES.values()) <= set(SYNTAXES)


def test_special_tokens_where_markers_are_control_tokens():
    for syntax in ("harmony", "llama3", "kimi_k2", "mistral", "granite", "deepseek_v3"):
        assert needs_special_tokens(syntax)
    assert not needs_special_tokens("json")


def test_opens_thinking_where_prompt_ends_in_think():
    r1 = (DATA / "templates" / "deepseek-r1.jinja").read_text(encoding="utf-8")
    assert opens_thinking(r1, "<｜User｜>hi<｜Assistant｜><think>\n")
    assert not opens_thinking(r1, "<｜User｜>hi<｜Assistant｜><think></think>")
    assert not opens_thinking(None, "<|im_start|>assistant\n")


# -- every family's real output, in every split

@pytest.mark.parametrize("name", sorted(CASES))
def test_real_output_parses_as_expected(name):
    case = CASES[name]
    assert summary(run(parser_for(case), [case["output"]])) == case["expect"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_any_split_gives_the_same_events(name):
    case = CASES[name]
    whole = normalized(run(parser_for(case), [case["output"]]))
    assert normalized(run(parser_for(case), list(case["output"]))) == whole
    for seed in range(5):
        assert normalized(run(parser_for(case), splits(case["output"], seed))) == whole


@pytest.mark.parametrize("name", sorted(CASES))
def test_cut_short_anywhere_loses_nothing_and_closes_calls(name):
    """Output ending at any point: calls that started close as valid objects, and whatever
    is no call comes out as text or thinking."""
    case = CASES[name]
    output = case["output"]
    for end in range(len(output) + 1):
        summary(run(parser_for(case), list(output[:end])))  # checks call shapes


def test_calls_counts_started_calls():
    case = CASES["mistral_small_two_calls"]
    parser = parser_for(case)
    run(parser, [case["output"]])
    assert parser.calls == 2
