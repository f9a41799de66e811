"""Chat templates: built-in formats, real models' templates, message checks and the sandbox.

The real templates under tests/data/templates come from llama.cpp's models/templates folder
and from the vocab-only GGUFs it ships (see the README there). Expected prompts are written
out by hand from each model's documented format.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tiny_model import write_spelling_model

from shimmy.models.chat_template import (
    BUILTIN_TEMPLATES,
    ChatTemplate,
    ChatTemplateError,
    normalize_messages,
    template_for,
)
from shimmy.models.embedded import embedded_model_path
from shimmy.models.gguf import read_gguf_info

TEMPLATES = Path(__file__).parent / "data" / "templates"

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "2+2?"},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call12345",  # Mistral Nemo insists on 9 characters
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call12345", "content": "18C, sunny"},
]


def real(name: str) -> ChatTemplate:
    template = template_for((TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8"))
    assert template.name == "gguf"
    return template


def builtin(name: str) -> ChatTemplate:
    return ChatTemplate(source=BUILTIN_TEMPLATES[name], name=name)


# --- built-in formats ---------------------------------------------------------------------

BUILTIN_PROMPTS: dict[str, tuple[str, str, str]] = {  # name: (bos, eos, prompt)
    "chatml": (
        "",
        "<|im_end|>",
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "llama3": (
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "llama2": (
        "<s>",
        "</s>",
        "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi! [/INST] Hello. </s>"
        "<s>[INST] 2+2? [/INST]",
    ),
    "mistral": (
        "<s>",
        "</s>",
        "<s>[INST] You are terse.\n\nHi! [/INST] Hello.</s>[INST] 2+2? [/INST]",
    ),
    "gemma": (
        "<bos>",
        "<eos>",
        "<bos><start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\n2+2?<end_of_turn>\n"
        "<start_of_turn>model\n",
    ),
    "phi3": (
        "",
        "<|endoftext|>",
        "<|system|>\nYou are terse.<|end|>\n"
        "<|user|>\nHi!<|end|>\n"
        "<|assistant|>\nHello.<|end|>\n"
        "<|user|>\n2+2?<|end|>\n"
        "<|assistant|>\n",
    ),
    "zephyr": (
        "<s>",
        "</s>",
        "<s><|system|>\nYou are terse.</s>\n"
        "<|user|>\nHi!</s>\n"
        "<|assistant|>\nHello.</s>\n"
        "<|user|>\n2+2?</s>\n"
        "<|assistant|>\n",
    ),
    "vicuna": (
        "<s>",
        "</s>",
        "<s>You are terse. USER: Hi! ASSISTANT: Hello.</s>USER: 2+2? ASSISTANT:",
    ),
}


def test_every_builtin_has_an_expected_prompt() -> None:
    assert set(BUILTIN_PROMPTS) == set(BUILTIN_TEMPLATES)


@pytest.mark.parametrize("name", sorted(BUILTIN_PROMPTS))
def test_builtin_renders_the_exact_prompt(name: str) -> None:
    bos, eos, expected = BUILTIN_PROMPTS[name]
    assert builtin(name).render(CONVERSATION, bos_token=bos, eos_token=eos) == expected


def test_gemma_without_system_and_without_generation_prompt() -> None:
    prompt = builtin("gemma").render(
        CONVERSATION[1:2], bos_token="<bos>", add_generation_prompt=False
    )
    assert prompt == "<bos><start_of_turn>user\nHi!<end_of_turn>\n"


def test_gemma_trims_turns_like_googles_template() -> None:
    messages = [{"role": "user", "content": "  Hi!\n"}]
    assert builtin("gemma").render(messages) == (
        "<start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\n"
    )


def test_vicuna_has_its_default_system_prompt() -> None:
    prompt = builtin("vicuna").render(CONVERSATION[1:2], bos_token="<s>")
    assert prompt == (
        "<s>A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions. "
        "USER: Hi! ASSISTANT:"
    )


@pytest.mark.parametrize("name", ["llama2", "mistral", "gemma", "vicuna"])
def test_strict_formats_require_alternating_roles(name: str) -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        builtin(name).render(messages)
    late_system = [*CONVERSATION[1:3], {"role": "system", "content": "s"}]
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        builtin(name).render(late_system)
    with pytest.raises(ChatTemplateError, match="needs a user message"):
        builtin(name).render(CONVERSATION[:1])


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtins_refuse_tool_messages_and_tools(name: str) -> None:
    template = builtin(name)
    assert not template.supports_tools
    with pytest.raises(ChatTemplateError, match="tool calling needs a model with its own"):
        template.render(TOOL_CONVERSATION)
    with pytest.raises(ChatTemplateError, match="has no tools"):
        template.render(CONVERSATION, tools=[WEATHER_TOOL])


def test_developer_role_renders_as_system() -> None:
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "x"}]
    assert builtin("chatml").render(messages, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nx<|im_end|>\n"
    )


# --- real templates -----------------------------------------------------------------------


def test_qwen25_plain_conversation() -> None:
    assert real("qwen2.5").render(CONVERSATION) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen25_with_tools_tool_call_and_result() -> None:
    template = real("qwen2.5")
    assert template.supports_tools
    tool_json = (
        '{"type": "function", "function": {"name": "get_weather", '
        '"description": "Weather for a city", "parameters": {"type": "object", '
        '"properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
    )
    assert template.render(TOOL_CONVERSATION, tools=[WEATHER_TOOL]) == (
        "<|im_start|>system\n"
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n"
        "# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{tool_json}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama32_plain_conversation_with_date_string() -> None:
    prompt = real("llama3.2").render(
        CONVERSATION, bos_token="<|begin_of_text|>", date_string="26 Jul 2024"
    )
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama32_dates_itself_with_strftime_now() -> None:
    prompt = real("llama3.2").render(CONVERSATION)
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}\n" in prompt


def test_llama32_tools_go_into_the_first_user_message() -> None:
    prompt = real("llama3.2").render(
        TOOL_CONVERSATION, tools=[WEATHER_TOOL], date_string="26 Jul 2024"
    )
    assert "Environment: ipython\n" in prompt
    assert json.dumps(WEATHER_TOOL, indent=4) + "\n\nWeather in Paris?<|eot_id|>" in prompt
    assert prompt.endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"18C, sunny"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_empty_tools_list_counts_as_no_tools() -> None:
    prompt = real("llama3.2").render(CONVERSATION, tools=[], date_string="26 Jul 2024")
    assert "Environment: ipython" not in prompt


def test_gemma2_conversation_and_its_refusal_of_system() -> None:
    template = real("gemma2")
    assert template.render(CONVERSATION[1:], bos_token="<bos>") == (
        "<bos><start_of_turn>user\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\n2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    with pytest.raises(ChatTemplateError, match="^System role not supported$"):
        template.render(CONVERSATION)


def test_gemma4_conversation_from_gguf_metadata() -> None:
    assert real("gemma4-gguf").render(CONVERSATION, bos_token="<bos>") == (
        "<bos><|turn>system\nYou are terse.<turn|>\n"
        "<|turn>user\nHi!<turn|>\n"
        "<|turn>model\nHello.<turn|>\n"
        "<|turn>user\n2+2?<turn|>\n"
        "<|turn>model\n<|channel>thought\n<channel|>"
    )


def test_gemma4_renders_tool_call_arguments_as_a_mapping() -> None:
    prompt = real("gemma4-gguf").render(TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    assert '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>' in prompt


def test_phi35_conversation() -> None:
    assert real("phi3.5").render(CONVERSATION) == (
        "<|system|>\nYou are terse.<|end|>\n"
        "<|user|>\nHi!<|end|>\n"
        "<|assistant|>\nHello.<|end|>\n"
        "<|user|>\n2+2?<|end|>\n"
        "<|assistant|>\n"
    )


def test_phi3_template_from_gguf_metadata_drops_system() -> None:
    assert real("phi3-gguf").render(CONVERSATION, bos_token="<s>") == (
        "<s><|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n"
        "<|user|>\n2+2?<|end|>\n<|assistant|>\n"
    )


def test_mistral_nemo_puts_system_into_the_last_user_turn() -> None:
    assert real("mistral-nemo").render(CONVERSATION, bos_token="<s>", eos_token="</s>") == (
        "<s>[INST]Hi![/INST]Hello.</s>[INST]You are terse.\n\n2+2?[/INST]"
    )


def test_mistral_nemo_with_tools() -> None:
    prompt = real("mistral-nemo").render(
        TOOL_CONVERSATION, bos_token="<s>", eos_token="</s>", tools=[WEATHER_TOOL]
    )
    assert prompt == (
        "<s>[AVAILABLE_TOOLS]"
        '[{"type": "function", "function": {"name": "get_weather", '
        '"description": "Weather for a city", "parameters": {"type": "object", '
        '"properties": {"city": {"type": "string"}}, "required": ["city"]}}}]'
        "[/AVAILABLE_TOOLS][INST]Weather in Paris?[/INST]"
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, '
        '"id": "call12345"}]</s>'
        '[TOOL_RESULTS]{"content": 18C, sunny, "call_id": "call12345"}[/TOOL_RESULTS]'
    )


def test_qwen3_thinking_switch_and_tool_call() -> None:
    template = real("qwen3")
    assert template.render(CONVERSATION[1:2], enable_thinking=False) == (
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    prompt = template.render(TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    assert (
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response><|im_end|>\n"
    ) in prompt


def test_qwen2_template_from_gguf_metadata_adds_its_default_system() -> None:
    assert real("qwen2-gguf").render(CONVERSATION[1:2]) == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )


def test_command_r_raise_exception_reaches_the_caller() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        real("command-r-gguf").render(messages)


def test_generation_tag_of_transformers_renders_its_body() -> None:
    prompt = real("lfm2.5").render(CONVERSATION, bos_token="<|startoftext|>")
    assert prompt == (
        "<|startoftext|><|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_deepseek_r1_distill() -> None:
    prompt = real("deepseek-r1-distill-qwen").render(
        CONVERSATION, bos_token="<｜begin▁of▁sentence｜>", enable_thinking=True
    )
    assert prompt == (
        "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi!<｜Assistant｜>Hello."
        "<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think>\n"
    )


def test_arguments_also_concatenate_as_the_clients_json_text() -> None:
    # Apertus-style templates build the call text with '+' instead of tojson.
    source = (
        "{% for call in messages[1].tool_calls %}"
        "{{ '{\"' + call.function.name + '\": ' + call.function.arguments + '}' }}|"
        "{{ call.function.arguments | tojson }}|{{ call.function.arguments | string }}"
        "{% endfor %}"
    )
    prompt = template_for(source).render(TOOL_CONVERSATION)
    assert prompt == '{"get_weather": {"city":"Paris"}}|{"city": "Paris"}|{"city":"Paris"}'


# --- template choice and stop strings -----------------------------------------------------


def test_gguf_template_wins_over_hints() -> None:
    template = template_for("{{ messages }}", "gemma3", "Gemma 3", ["<start_of_turn>"])
    assert template == ChatTemplate(source="{{ messages }}", name="gguf")
    assert template_for("  \n", "gemma3").name == "gemma"


@pytest.mark.parametrize(
    ("architecture", "model_name", "vocab", "expected"),
    [
        ("gemma", None, (), "gemma"),
        ("gemma2", None, (), "gemma"),
        ("gemma3", "Gemma 3 270m", (), "gemma"),
        ("llama", "Tiny Speller", ("<s>", "</s>", "<|eot_id|>"), "llama3"),
        ("llama", None, ("<|start_header_id|>",), "llama3"),
        ("llama", "Meta-Llama-3.1-8B-Instruct", (), "llama3"),
        ("llama", "llama3-8b", (), "llama3"),
        ("llama", "Tiny Speller", ("<s>", "</s>"), "llama2"),
        ("llama", "Mistral-7B-Instruct-v0.2", (), "mistral"),
        ("llama", "Mixtral-8x7B-Instruct-v0.1", (), "mistral"),
        ("llama", "Mistral 7B with ChatML", ("<|im_start|>",), "chatml"),
        ("llama", "zephyr-7b-beta", (), "zephyr"),
        ("llama", "vicuna-13b-v1.5", (), "vicuna"),
        ("qwen", None, (), "chatml"),
        ("qwen2", None, (), "chatml"),
        ("qwen3", None, (), "chatml"),
        ("phi3", None, (), "phi3"),
        ("falcon", None, (), "chatml"),
        (None, None, (), "chatml"),
    ],
)
def test_fallback_builtin(
    architecture: str | None, model_name: str | None, vocab: tuple[str, ...], expected: str
) -> None:
    template = template_for(None, architecture, model_name, iter(vocab))
    assert template.name == expected
    assert template.source == BUILTIN_TEMPLATES[expected]


@pytest.mark.parametrize(
    ("name", "stops"),
    [
        ("chatml", ["<|im_end|>"]),
        ("llama3", ["<|eot_id|>", "<|eom_id|>"]),
        ("llama2", ["</s>", "[INST]"]),
        ("mistral", ["</s>", "[INST]"]),
        ("gemma", ["<end_of_turn>"]),
        ("phi3", ["<|end|>", "<|endoftext|>"]),
        ("zephyr", ["</s>", "<|user|>"]),
        ("vicuna", ["</s>", "USER:"]),
    ],
)
def test_builtin_stop_strings(name: str, stops: list[str]) -> None:
    assert builtin(name).stop_strings() == stops


@pytest.mark.parametrize(
    ("fixture", "stops"),
    [
        ("qwen2.5", ["<|im_end|>"]),
        ("qwen3", ["<|im_end|>"]),
        ("llama3.2", ["<|eot_id|>"]),
        ("gemma2", ["<end_of_turn>"]),
        ("gemma4-gguf", ["<turn|>"]),
        ("phi3.5", ["<|end|>"]),
        ("phi3-gguf", ["<|end|>"]),
        ("mistral-nemo", ["[INST]"]),
        ("deepseek-r1-distill-qwen", ["<｜end▁of▁sentence｜>"]),
        ("command-r-gguf", ["<|END_OF_TURN_TOKEN|>"]),
        ("gpt-oss", ["<|return|>", "<|call|>"]),  # its <|end|> only closes a channel
    ],
)
def test_stop_strings_are_read_from_the_template(fixture: str, stops: list[str]) -> None:
    assert real(fixture).stop_strings() == stops


def test_supports_tools_follows_the_source() -> None:
    assert real("qwen2.5").supports_tools
    assert real("mistral-nemo").supports_tools
    assert not real("gemma2").supports_tools
    assert not real("phi3.5").supports_tools


def test_template_round_trips_through_a_gguf(tmp_path: Path) -> None:
    source = (TEMPLATES / "qwen2.5.jinja").read_text(encoding="utf-8")
    path = write_spelling_model(tmp_path / "chat.gguf", "ab", chat_template=source)
    info = read_gguf_info(path)
    template = template_for(info.chat_template, info.architecture, info.name)
    assert template == ChatTemplate(source=source, name="gguf")
    assert template.render(CONVERSATION) == real("qwen2.5").render(CONVERSATION)

    bare = read_gguf_info(write_spelling_model(tmp_path / "bare.gguf", "ab"))
    assert template_for(bare.chat_template, bare.architecture, bare.name).name == "llama2"


def test_embedded_gemma_falls_back_to_the_gemma_format() -> None:
    path = embedded_model_path()
    if path is None:
        pytest.skip("the embedded model package is not installed")
    info = read_gguf_info(path)
    assert info.chat_template is None
    template = template_for(info.chat_template, info.architecture, info.name)
    assert template.name == "gemma"
    assert template.stop_strings() == ["<end_of_turn>"]


# --- messages -----------------------------------------------------------------------------


def test_text_parts_are_joined_with_newlines() -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    messages = normalize_messages([{"role": "user", "content": parts}])
    assert messages == [{"role": "user", "content": "one\ntwo"}]


def test_optional_fields_are_kept_only_when_given() -> None:
    messages = normalize_messages(
        [
            {"role": "developer", "content": "rules", "name": "ops", "extra": 1},
            {"role": "assistant", "content": "x", "reasoning_content": "why"},
        ]
    )
    assert messages == [
        {"role": "system", "content": "rules", "name": "ops"},
        {"role": "assistant", "content": "x", "reasoning_content": "why"},
    ]


def test_tool_calls_get_parsed_arguments() -> None:
    assistant, tool = normalize_messages(TOOL_CONVERSATION)[1:]
    assert assistant["content"] == ""
    call = assistant["tool_calls"][0]
    assert call["id"] == "call12345"
    arguments = call["function"]["arguments"]
    assert arguments == {"city": "Paris"}
    assert isinstance(arguments, dict)
    assert str(arguments) == '{"city":"Paris"}'
    assert tool == {"role": "tool", "content": "18C, sunny", "tool_call_id": "call12345"}


def test_normalizing_twice_changes_nothing() -> None:
    once = normalize_messages(TOOL_CONVERSATION)
    twice = normalize_messages(once)
    assert twice == once
    assert str(twice[1]["tool_calls"][0]["function"]["arguments"]) == '{"city":"Paris"}'


def test_parsed_arguments_copy_and_serialize_as_plain_objects() -> None:
    (message,) = normalize_messages([TOOL_CONVERSATION[1]])
    copied = copy.deepcopy(message)
    assert copied == message
    assert str(copied["tool_calls"][0]["function"]["arguments"]) == '{"city":"Paris"}'
    assert json.loads(json.dumps(message)) == message


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("not json", "not json"),
        ("[1, 2]", "[1, 2]"),
        ({"n": 1}, {"n": 1}),
    ],
)
def test_arguments_that_are_not_a_json_object_string(arguments: Any, expected: Any) -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": arguments}}
    (message,) = normalize_messages([{"role": "assistant", "tool_calls": [call]}])
    assert message["tool_calls"][0]["function"]["arguments"] == expected


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ({"role": "user"}, r"^messages must be an array \(got object\)$"),
        ([], "^messages must not be empty$"),
        (["hi"], r"^messages\[0\] must be an object \(got string\)$"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "bot"}],
            r"^messages\[2\]\.role must be one of system, developer, user, assistant, tool "
            r"\(got 'bot'\)$",
        ),
        ([{"content": "x"}], r"^messages\[0\]\.role must be one of .* \(got None\)$"),
        ([{"role": "user"}], r"^messages\[0\]\.content is required$"),
        ([{"role": "assistant", "content": None}], r"messages\[0\]\.content must be a string"),
        ([{"role": "user", "content": 42}], r"^messages\[0\]\.content must be .*\(got number\)$"),
        (
            [{"role": "user", "content": [{"type": "text"}]}],
            r"^messages\[0\]\.content\[0\]\.text must be a string \(got null\)$",
        ),
        (
            [{"role": "user", "content": [{"type": "html", "text": "x"}]}],
            r"^messages\[0\]\.content\[0\]\.type must be 'text' \(got 'html'\)$",
        ),
        (
            [{"role": "user", "content": "x", "name": 5}],
            r"^messages\[0\]\.name must be a string \(got number\)$",
        ),
        (
            [{"role": "tool", "content": "18C"}],
            r"^messages\[0\]\.tool_call_id must be a non-empty string \(got null\)$",
        ),
        (
            [{"role": "user", "content": "x", "tool_calls": []}],
            r"^messages\[0\]\.tool_calls is only allowed on assistant messages$",
        ),
        (
            [{"role": "assistant", "tool_calls": {"id": "x"}}],
            r"^messages\[0\]\.tool_calls must be an array \(got object\)$",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]}],
            r"^messages\[0\]\.tool_calls\[0\]\.function\.name must be a non-empty string$",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"type": "code", "function": {"name": "f"}}]}],
            r"^messages\[0\]\.tool_calls\[0\]\.type must be 'function' \(got 'code'\)$",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}],
            r"^messages\[0\]\.tool_calls\[0\]\.function\.arguments must be a JSON string",
        ),
    ],
)
def test_bad_messages_are_rejected_with_their_place(messages: Any, error: str) -> None:
    with pytest.raises(ChatTemplateError, match=error):
        normalize_messages(messages)


def test_image_parts_are_refused() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": content}]
    with pytest.raises(ChatTemplateError, match=r"accepts text only: messages\[1\]\.content\[1\]"):
        normalize_messages(messages)


def test_render_checks_messages_and_tools() -> None:
    with pytest.raises(ChatTemplateError, match=r"messages\[0\]\.role"):
        builtin("chatml").render([{"role": "robot", "content": "x"}])
    with pytest.raises(ChatTemplateError, match=r"^tools\[0\] must be an object"):
        real("qwen2.5").render(CONVERSATION, tools=["get_weather"])


# --- Jinja environment and sandbox --------------------------------------------------------


def test_tojson_matches_transformers() -> None:
    template = template_for("{{ value | tojson }}|{{ value | tojson(indent=2) }}")
    value = {"b": "é<&>", "a": [1, None]}
    assert template.render(CONVERSATION, value=value) == (
        '{"b": "é<&>", "a": [1, null]}|{\n  "b": "é<&>",\n  "a": [\n    1,\n    null\n  ]\n}'
    )


def test_trim_and_lstrip_blocks_are_on() -> None:
    source = (
        "{% for m in messages %}\n"
        "    {% if m.role == 'user' %}\n"
        "[{{ m.content }}]\n"
        "    {% endif %}\n"
        "{% endfor %}"
    )
    assert template_for(source).render(CONVERSATION) == "[Hi!]\n[2+2?]\n"


def test_loop_controls_and_strftime_now() -> None:
    source = (
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{{ m.role }} {% endfor %}{{ strftime_now('%Y') }}"
    )
    assert template_for(source).render(CONVERSATION) == f"system user {datetime.now():%Y}"


def test_raise_exception_gives_its_message() -> None:
    template = template_for("{{ raise_exception('Only user and assistant roles, please') }}")
    with pytest.raises(ChatTemplateError, match="^Only user and assistant roles, please$"):
        template.render(CONVERSATION)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ raise_exception.__globals__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ messages[0]['__class__'] }}",
        "{{ messages[0].content | attr('__class__') }}",
        "{{ '{0.__class__}'.format(1) }}",
        "{{ messages.append(1) }}",
        "{{ messages[0].update({'role': 'system'}) }}",
    ],
)
def test_sandbox_refuses_internals_and_mutation(source: str) -> None:
    with pytest.raises(ChatTemplateError, match="unsafe operation"):
        template_for(source).render(CONVERSATION)


def test_broken_templates_raise_chat_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match=r"does not compile \(line 1\)"):
        template_for("{% if %}").render(CONVERSATION)
    with pytest.raises(ChatTemplateError, match="failed to render: TypeError"):
        template_for("{{ messages[0].content + 1 }}").render(CONVERSATION)
    with pytest.raises(ChatTemplateError, match="failed to render: OverflowError"):
        template_for("{% for i in range(10**9) %}{% endfor %}").render(CONVERSATION)


def test_import_does_not_load_jinja() -> None:
    code = "import sys, shimmy.models.chat_template; print('jinja2' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
