"""Pieces of the Ollama listener that need no server: options, Go templates, messages,
error bodies."""

from __future__ import annotations

import pytest

from shimmy.api.ollama import gotemplate
from shimmy.api.ollama.chat import ollama_call, translate_messages
from shimmy.api.ollama.common import ModelNotFound, ollama_error_body
from shimmy.api.ollama.options import parse_options
from shimmy.cli import build_parser
from shimmy.config import Config, ConfigError
from shimmy.errors import ApiError, invalid_request, model_not_found


def test_defaults_are_ollamas() -> None:
    options = parse_options(None)
    sampling = options.sampling
    assert (sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p) == \
        (0.8, 40, 0.9, 0.0)
    assert sampling.penalty_last_n == 64 and sampling.repeat_penalty == 1.0
    assert options.num_predict is None and options.num_ctx is None and options.stop == []


@pytest.mark.parametrize(("predict", "budget"), [(-1, 90), (-2, 90), (0, 90), (5, 5),
                                                 (500, 90)])
def test_num_predict_as_ollama_means_it(predict: int, budget: int) -> None:
    assert parse_options({"num_predict": predict}).budget(100, 10) == budget


def test_num_ctx_lowers_the_context_a_request_may_fill() -> None:
    assert parse_options({"num_ctx": 50}).budget(100, 10) == 40
    assert parse_options({"num_ctx": 500}).budget(100, 10) == 90
    with pytest.raises(ApiError) as caught:
        parse_options({"num_ctx": 10}).budget(100, 10)
    assert caught.value.status == 400


def test_values_are_converted_as_go_converts_them() -> None:
    options = parse_options({"top_k": 7.9, "temperature": 1, "seed": 3.0, "stop": ["a", ""],
                             "repeat_last_n": -1, "top_p": 3, "unknown": {"x": 1},
                             "mirostat": 2, "temperature_typo": "x", "num_ctx": None})
    sampling = options.sampling
    assert sampling.top_k == 7 and sampling.temperature == 1.0 and sampling.seed == 3
    assert sampling.top_p == 1.0 and sampling.penalty_last_n == 1_000_000
    assert options.stop == ["a"]


@pytest.mark.parametrize(("options", "error"), [
    ({"temperature": "0.5"}, 'option "temperature" must be of type float32'),
    ({"top_k": True}, 'option "top_k" must be of type integer'),
    ({"num_predict": [1]}, 'option "num_predict" must be of type integer'),
    ({"use_mmap": "yes"}, 'option "use_mmap" must be of type boolean'),
    ({"stop": "x"}, 'option "stop" must be of type array'),
    ({"stop": [1]}, 'option "stop" must be of an array of strings'),
    ([1], "options must be an object"),
])
def test_wrong_types_are_refused(options, error: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_options(options)
    assert caught.value.status == 400
    assert ollama_error_body(caught.value) == {"error": error}


@pytest.mark.parametrize(("template", "values", "text"), [
    ("{{ .System }} {{ .Prompt }}", {"System": "S", "Prompt": "P"}, "S P"),
    ("{{ if .System }}<s>{{ .System }}</s>{{ end }}{{ .Prompt }}",
     {"System": "", "Prompt": "P"}, "P"),
    ("{{ if .System }}A{{ else }}B{{ end }}", {"System": "x"}, "A"),
    ("{{ if .System }}A{{ else }}B{{ end }}", {"System": ""}, "B"),
    ("a  {{- .Prompt -}}  b", {"Prompt": "P"}, "aPb"),
    ("{{ if .Suffix }}<pre>{{ .Prompt }}<suf>{{ .Suffix }}<mid>{{ end }}",
     {"Suffix": "S", "Prompt": "P"}, "<pre>P<suf>S<mid>"),
    ("{{/* note */}}x", {}, "x"),
])
def test_go_templates(template: str, values: dict, text: str) -> None:
    assert gotemplate.render(template, values) == text


@pytest.mark.parametrize("template", ["{{ range .Messages }}{{ end }}", "{{ .Nope }}",
                                      "{{ if .Prompt }}x", "{{ end }}", "{{ else }}"])
def test_go_template_features_shimmy_cannot_run_are_refused(template: str) -> None:
    with pytest.raises(ApiError) as caught:
        gotemplate.render(template, {"Prompt": "p"})
    assert caught.value.status == 400


def test_tool_turns_get_the_ids_of_the_calls_they_answer() -> None:
    messages = translate_messages([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "thinking": "hmm", "tool_calls": [
            {"function": {"name": "a", "arguments": {"x": 1}}},
            {"function": {"name": "b", "arguments": {}}}]},
        {"role": "tool", "tool_name": "b", "content": "B"},
        {"role": "tool", "content": "A"},
    ])
    assistant, answer_b, answer_a = messages[1:]
    ids = [call["id"] for call in assistant["tool_calls"]]
    assert assistant["content"] == "" and assistant["reasoning_content"] == "hmm"
    assert answer_b["tool_call_id"] == ids[1] and answer_b["name"] == "b"
    assert answer_a["tool_call_id"] == ids[0]


def test_calls_go_out_with_arguments_as_objects() -> None:
    call = ollama_call({"id": "call_1", "name": "f", "arguments": '{"a": [1]}'}, 0)
    assert call == {"id": "call_1", "function": {"index": 0, "name": "f",
                                                 "arguments": {"a": [1]}}}
    assert ollama_call({"id": "c", "name": "f", "arguments": "{"}, 1)["function"][
        "arguments"] == {}


def test_error_bodies() -> None:
    assert ollama_error_body(ModelNotFound("x:1b")) == \
        {"error": 'model "x:1b" not found, try pulling it first'}
    assert ollama_error_body(model_not_found("y")) == \
        {"error": 'model "y" not found, try pulling it first'}
    assert ollama_error_body(invalid_request("'prompt' must be a string")) == \
        {"error": "'prompt' must be a string"}


@pytest.mark.parametrize(("args", "bind"), [
    ([], ("127.0.0.1", 11434)), (["--ollama-bind", "off"], None),
    (["--ollama-bind", "0.0.0.0:11500"], ("0.0.0.0", 11500)),
    (["--ollama-bind", ":0"], ("127.0.0.1", 0)),
])
def test_the_ollama_bind_flag(args: list[str], bind: tuple[str, int] | None) -> None:
    assert Config.from_args(build_parser().parse_args(["serve", *args])).ollama_bind == bind


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1:port", "127.0.0.1:70000"])
def test_a_bad_ollama_bind_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="--ollama-bind"):
        Config.from_args(build_parser().parse_args(["serve", "--ollama-bind", value]))
