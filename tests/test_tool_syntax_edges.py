"""Streaming parsers (shimmy.chat.syntax): holding back, failed calls staying text,
calls cut short, the constructor's options, and the incremental JSON reader."""

from __future__ import annotations

import json
import random

import pytest

from shimmy.chat.events import (
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from shimmy.chat.syntax import SYNTAXES, OutputParser
from shimmy.chat.syntax.jsonstream import JsonValue
from shimmy.chat.syntax.source import Fail

CODE = {"python": {"type": "object", "properties": {"code": {"type": "string"}}}}


def run(parser: OutputParser, pieces) -> list:
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish()


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def thinking_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, ThinkingDelta))


def calls_of(events) -> list:
    ends = [e for e in events if isinstance(e, ToolCallEnd)]
    names = [e.name for e in events if isinstance(e, ToolCallStart)]
    return [[name, json.loads(end.arguments)] for name, end in zip(names, ends, strict=True)]


# -- emitted as soon as it can be, held while it could be a marker

def test_text_streams_at_once_and_holds_only_a_possible_marker():
    parser = OutputParser("hermes", ["python"])
    assert parser.feed("Hello") == [TextDelta("Hello")]
    assert parser.feed(" <tool") == [TextDelta(" ")]
    assert parser.feed("s>") == [TextDelta("<tools>")]
    assert parser.finish() == []


def test_arguments_stream_before_the_call_ends():
    parser = OutputParser("hermes", ["python"])
    events = parser.feed('<tool_call>{"name": "python", "arguments": {"code": "print(')
    assert [type(e) for e in events] == [ToolCallStart, ToolCallDelta]
    assert events[1].arguments == '{"code": "print('
    assert parser.feed("1)\"}}") == [ToolCallDelta(0, '1)"}'),
                                     ToolCallEnd(0, '{"code": "print(1)"}')]


def test_forced_output_starts_the_call_once_the_name_is_complete():
    parser = OutputParser("json", ["python"], forced=True)
    assert parser.feed('{"name": "pyth') == []
    started = parser.feed('on", "arguments": {"co')
    assert isinstance(started[0], ToolCallStart) and started[0].name == "python"
    assert started[1:] == [ToolCallDelta(0, '{"co')]
    events = parser.feed('de": "x"}}') + parser.finish()
    assert events[-1] == ToolCallEnd(0, '{"code": "x"}')
    assert parser.calls == 1


def test_thinking_streams_and_drops_the_space_around_it():
    parser = OutputParser("hermes", ["python"])
    assert parser.feed("<think>\nOne") == [ThinkingDelta("One")]
    assert parser.feed(" two \n") == [ThinkingDelta(" two")]
    assert parser.feed("</think>\n\nAnswer") == [TextDelta("Answer")]


# -- what is no call stays text, every character of it

@pytest.mark.parametrize("output", [
    '<tool_call>\n{"name": "unknown", "arguments": {"a": 1}}\n</tool_call>',
    "<tool_call>I will not call anything.</tool_call>",
    '<tool_call>\n{"name": "python", "arguments": {"code": "x"} oops',
    "<tool_call>\n{\"name\": \"pyth",
    "Use <tool_call> tags like <tool_call>this</tool_call>.",
])
def test_failed_calls_stay_text(output):
    for pieces in ([output], list(output)):
        events = run(OutputParser("hermes", ["python"]), pieces)
        if any(isinstance(e, ToolCallStart) for e in events):
            continue  # the third case closes its call; checked below
        assert text_of(events) == output


def test_a_call_that_breaks_after_its_arguments_keeps_the_rest_as_text():
    output = '<tool_call>\n{"name": "python", "arguments": {"code": "x"} oops'
    events = run(OutputParser("hermes", ["python"]), list(output))
    assert calls_of(events) == [["python", {"code": "x"}]]
    assert text_of(events) == "oops"


@pytest.mark.parametrize("cut, arguments", [
    ('{"code": "pri', {"code": "pri"}),
    ('{"code": "a\\', {"code": "a"}),
    ('{"code": "a\\u00', {"code": "a"}),
    ('{"code"', {"code": None}),
    ('{"code": ', {"code": None}),
    ('{"n": 12', {"n": None}),
    ('{"n": [1, 2,', {"n": [1, 2]}),
    ('{"n": {"m": tr', {"n": {"m": None}}),
])
def test_a_call_cut_short_closes_with_valid_arguments(cut, arguments):
    output = '<tool_call>{"name": "python", "arguments": ' + cut
    for pieces in ([output], list(output)):
        events = run(OutputParser("hermes", ["python"]), pieces)
        assert calls_of(events) == [["python", arguments]]


def test_text_before_an_unknown_call_and_after_a_known_one():
    output = ('Sure.[TOOL_CALLS]nope[ARGS]{"a": 1}[TOOL_CALLS]python[ARGS]{"code": "1"}'
              " Done.")
    events = run(OutputParser("mistral", ["python"]), list(output))
    assert text_of(events) == 'Sure.[TOOL_CALLS]nope[ARGS]{"a": 1} Done.'
    assert calls_of(events) == [["python", {"code": "1"}]]


_FRAGMENTS = ["<tool_call>", "</tool_call>", "<tool", "{", "}", "[", "]", '"name"', ": ",
              '"nope"', '"arguments"', ", ", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>",
              "nope.call(", ")", "<function=", "nope>", "<parameter=", "</function>",
              "<|tool_call|>", "<|tool_calls_section_begin|>", "<|tool_call_begin|>",
              "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "```json",
              "<arg_key>", "\n", " ", "text", "é", '"', "\\"]


@pytest.mark.parametrize("syntax", [s for s in SYNTAXES if s != "harmony"])
def test_random_output_without_known_calls_is_all_text(syntax):
    rng = random.Random(7)
    for _ in range(60):
        output = "".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 25)))
        pieces = [output[i:i + 3] for i in range(0, len(output), 3)]
        events = run(OutputParser(syntax, ["python"], thinking=False), pieces)
        assert text_of(events) == output
        assert not calls_of(events)


# -- options

def test_without_tools_calls_are_text_and_thinking_is_still_split():
    output = "<think>hm</think><tool_call>{\"name\": \"python\", \"arguments\": {}}</tool_call>"
    events = run(OutputParser("hermes", None), list(output))
    assert thinking_of(events) == "hm"
    assert text_of(events) == output.removeprefix("<think>hm</think>")


def test_thinking_off_keeps_think_tags_as_text():
    output = "<think>hm</think>Answer"
    assert text_of(run(OutputParser("hermes", ["python"], thinking=False), list(output))) == output


def test_open_thinking_starts_inside_the_block():
    events = run(OutputParser("deepseek_r1", None, open_thinking=True), list("a\n</think>\nb"))
    assert (thinking_of(events), text_of(events)) == ("a", "b")


def test_open_thinking_tolerates_a_repeated_think_tag():
    events = run(OutputParser("hermes", None, open_thinking=True), ["<think>\na</think>b"])
    assert (thinking_of(events), text_of(events)) == ("a", "b")


def test_output_cut_inside_thinking_is_thinking():
    events = run(OutputParser("hermes", None), list("<think>still going</thi"))
    assert thinking_of(events) == "still going</thi"


def test_parallel_false_still_reports_every_call():
    output = ('<tool_call>{"name": "python", "arguments": {}}</tool_call>'
              '<tool_call>{"name": "python", "arguments": {"code": "2"}}</tool_call>')
    parser = OutputParser("hermes", ["python"], parallel=False)
    assert len(calls_of(run(parser, [output]))) == 2 and parser.calls == 2


def test_unknown_syntax_is_refused():
    with pytest.raises(ValueError):
        OutputParser("nope", None)


def test_name_after_arguments_and_arguments_as_a_string():
    output = ('<tool_call>{"arguments": {"code": "1"}, "name": "python"}</tool_call>'
              '<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"2\\"}"}</tool_call>')
    events = run(OutputParser("hermes", ["python"]), list(output))
    assert calls_of(events) == [["python", {"code": "1"}], ["python", {"code": "2"}]]
    assert text_of(events) == ""


def test_raw_newlines_in_argument_strings_are_escaped():
    output = '<tool_call>{"name": "python", "arguments": {"code": "a\nb"}}</tool_call>'
    events = run(OutputParser("hermes", ["python"]), list(output))
    assert calls_of(events) == [["python", {"code": "a\nb"}]]


def test_llama3_nested_function_object():
    output = '{"type": "function", "function": {"name": "python", "parameters": {"code": "1"}}}'
    assert calls_of(run(OutputParser("llama3", ["python"]), list(output))) == \
        [["python", {"code": "1"}]]


def test_xml_values_follow_the_schema():
    output = ("<tool_call>\n<function=python>\n<parameter=code>\n123\n</parameter>\n"
              "<parameter=n>\n[1, 2]\n</parameter>\n</function>\n</tool_call>")
    typed = OutputParser("qwen3_coder", ["python"], tool_schemas=CODE)
    assert calls_of(run(typed, [output])) == [["python", {"code": "123", "n": [1, 2]}]]
    untyped = OutputParser("qwen3_coder", ["python"])
    assert calls_of(run(untyped, [output])) == [["python", {"code": 123, "n": [1, 2]}]]


def test_xml_call_arguments_come_per_parameter():
    parser = OutputParser("glm", ["python"])
    events = parser.feed("<tool_call>python\n<arg_key>code</arg_key>\n<arg_value>print(1)")
    assert [type(e) for e in events] == [ToolCallStart]
    events = parser.feed("</arg_value>\n")
    assert events == [ToolCallDelta(0, '{"code": "print(1)"')]
    assert parser.feed("</tool_call>") == [ToolCallDelta(0, "}"),
                                           ToolCallEnd(0, '{"code": "print(1)"}')]


def test_harmony_builtin_and_unknown_recipients_stay_text():
    output = ("<|channel|>analysis<|message|>run it<|end|>"
              "<|start|>assistant<|channel|>commentary to=python <|constrain|>code"
              "<|message|>print(1)<|call|>")
    events = run(OutputParser("harmony", ["f"]), list(output))
    assert thinking_of(events) == "run it"
    assert text_of(events) == ("<|start|>assistant<|channel|>commentary to=python "
                               "<|constrain|>code<|message|>print(1)<|call|>")


def test_harmony_without_thinking_keeps_the_analysis_markup():
    output = ("<|channel|>analysis<|message|>hm<|end|>"
              "<|start|>assistant<|channel|>final<|message|>Hi")
    events = run(OutputParser("harmony", None, thinking=False), list(output))
    assert text_of(events) == "<|channel|>analysis<|message|>hm<|end|>Hi"


def test_harmony_plain_text_without_headers():
    events = run(OutputParser("harmony", ["f"]), list("Just text."))
    assert text_of(events) == "Just text."


# -- the incremental JSON reader

def _read(text: str) -> JsonValue:
    value = JsonValue()
    for ch in text:
        value.push(ch)
    return value


@pytest.mark.parametrize("text", ['{"a": [1, -2.5e3, true, null, "x\\"y\\u00e9"], "b": {}}',
                                  "[]", '"s"', '{ "a" : { } }'])
def test_json_reader_accepts_valid_json(text):
    value = _read(text)
    assert value.done and json.loads(value.text) == json.loads(text)


@pytest.mark.parametrize("text", ['{"a" 1}', '{"a": 01}', "{'a': 1}", '{"a": tru}', "[1,]",
                                  '{"a": "\\x"}', "{]", '{"a": 1,}'])
def test_json_reader_refuses_invalid_json(text):
    with pytest.raises(Fail):
        value = _read(text)
        value.finish()
        assert value.done


def test_json_reader_tells_how_to_close_what_it_emitted():
    value = _read('{"a": [1, {"b": "c')
    emitted = value.take()
    assert json.loads(emitted + value.completion()) == {"a": [1, {"b": "c"}]}
