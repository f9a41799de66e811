"""LangChain's ``ChatOllama`` against the Ollama listener, on the embedded model."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from test_ollama_listener import CALL_FORMAT, TAGGED


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.fixture(scope="module")
def chat(ollama_port: int) -> ChatOllama:
    return ChatOllama(model=TAGGED, base_url=f"http://127.0.0.1:{ollama_port}",
                      temperature=0, num_predict=12, validate_model_on_init=True)


def test_invoke(chat: ChatOllama) -> None:
    answer = chat.invoke("What is the capital of France?")
    assert isinstance(answer, AIMessage) and answer.content
    assert answer.response_metadata["done_reason"] == "length"
    assert answer.usage_metadata["output_tokens"] == 12
    assert answer.usage_metadata["input_tokens"] > 0


def test_stream_matches_invoke(chat: ChatOllama) -> None:
    whole = chat.invoke("Name a color.").content
    chunks = list(chat.stream("Name a color."))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    assert "".join(chunk.content for chunk in chunks) == whole


def test_a_bound_tool_is_called(ollama_port: int) -> None:
    model = ChatOllama(model=TAGGED, base_url=f"http://127.0.0.1:{ollama_port}",
                       temperature=0, num_predict=60, format=CALL_FORMAT)
    answer = model.bind_tools([get_weather]).invoke("What is the weather in Paris?")
    (call,) = answer.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    assert get_weather.invoke(call["args"]).startswith("sunny in ")


def test_an_unknown_model_fails_validation(ollama_port: int) -> None:
    with pytest.raises(ValueError, match="not found"):
        ChatOllama(model="llama3.2", base_url=f"http://127.0.0.1:{ollama_port}",
                   validate_model_on_init=True)
