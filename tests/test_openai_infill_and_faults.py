"""/v1 behaviour that needs a special model: infill, a model that cannot load."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from conftest import ShimmyProcess, isolated_env
from gguf_factory import write_gguf
from tiny_model import byte_token, write_spelling_model

TEXT = "Ω:wö 😀中!"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    home = tmp_path_factory.mktemp("home")
    models = tmp_path_factory.mktemp("models")
    # FIM markers are bytes that do not occur in TEXT, so after <mid> the model spells TEXT
    markers = tuple(byte_token(b) for b in b"#$%")
    write_spelling_model(models / "infiller.gguf", TEXT, fim_tokens=markers)
    write_gguf(models / "broken.gguf")  # a header llama.cpp reads, weights it cannot load
    process = ShimmyProcess(["--model-dirs", str(models), "--threads", "1", "--ctx", "256"],
                            isolated_env(home), home)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{process.port}/v1", api_key="x",
                        max_retries=0)
    process.stop()


def test_suffix_builds_an_infill_prompt(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="infiller", prompt="f(x", suffix="):",
                                      max_tokens=40, temperature=0)
    assert reply.choices[0].text == TEXT
    # BOS, <pre>, 3 prefix bytes, <suf>, 2 suffix bytes, <mid>
    assert reply.usage.prompt_tokens == 1 + 1 + 3 + 1 + 2 + 1


def test_a_model_that_cannot_load_is_a_server_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="broken", max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["type"] == "server_error"
    assert "broken" in caught.value.body["message"]
    # the server keeps serving the models that work
    again = client.completions.create(model="infiller", prompt="x", max_tokens=40,
                                      temperature=0)
    assert again.choices[0].text == TEXT
