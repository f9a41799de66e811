"""What a newcomer sees when shimmy has nothing it can serve: one screen that says what
is wrong and what to do, and a non-zero exit, never a traceback; over HTTP, a model
llama.cpp cannot load is an error in the API's own shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import request_json
from conftest import ShimmyProcess, isolated_env
from gguf_factory import write_bad_magic, write_gguf, write_truncated
from test_cli import home, run_shimmy, without_embedded
from tiny_model import write_spelling_model

__all__ = ["home", "without_embedded"]  # fixtures shared with test_cli

COMMANDS = {
    "serve": ["serve", "--port", "0", "--ollama-bind", "off"],
    "generate": ["generate", "--prompt", "Hi", "--max-tokens", "2"],
    "probe": ["probe"],
}


def screen_of(home: Path, command: str, *args: str, **env: str) -> str:
    result = run_shimmy(home, *COMMANDS[command], *args, timeout=60, **env)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout
    return result.stderr


def bad_file(folder: Path, kind: str) -> Path:
    """``folder/model.gguf``: not a GGUF, or a GGUF cut short as a download can be."""
    if kind == "not-gguf":
        return write_bad_magic(folder / "model.gguf")
    whole = write_gguf(folder.parent / f"{folder.name}-whole.gguf")
    return write_truncated(whole, folder / "model.gguf", whole.stat().st_size - 40)


@pytest.mark.parametrize("command", COMMANDS)
def test_no_model_anywhere(home: Path, without_embedded: dict[str, str], command: str) -> None:
    empty = home / "empty"
    empty.mkdir()
    stderr = screen_of(home, command, "--model-dirs", str(empty), **without_embedded)
    assert "No models found. shimmy looked in:" in stderr
    assert str(empty) in stderr and str(home / "models") in stderr  # where it looked
    assert "--model-path FILE.gguf" in stderr and "--model-dirs DIR" in stderr


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("kind", "reason", "advice"), [
    ("not-gguf", "not a GGUF file", "convert_hf_to_gguf.py"),
    ("truncated", "truncated file", "Download it again"),
])
def test_a_model_file_that_cannot_be_used(
        home: Path, command: str, kind: str, reason: str, advice: str) -> None:
    path = bad_file(home, kind)
    stderr = screen_of(home, command, "--model-path", str(path))
    [first, *rest] = stderr.strip().splitlines()
    assert f"--model-path {path}: {reason}" in first
    assert advice in " ".join(rest)


def test_a_bad_file_in_a_folder_is_named_when_nothing_else_is_there(
        home: Path, without_embedded: dict[str, str]) -> None:
    folder = home / "downloads"
    folder.mkdir()
    cut = bad_file(folder, "truncated")
    stderr = screen_of(home, "serve", "--model-dirs", str(folder), **without_embedded)
    assert f"{cut}: truncated file" in stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_an_architecture_llama_cpp_does_not_know(home: Path, command: str) -> None:
    path = write_gguf(home / "future.gguf", arch="notanarch")
    stderr = screen_of(home, command, "--model-path", str(path))
    assert "'notanarch' is not one this llama.cpp" in stderr
    assert "llama-cpp-python 0.3." in stderr  # the version that does not know it
    assert "A newer llama.cpp may know it" in stderr


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimmyProcess]:
    """A server over a model that loads and one of an architecture llama.cpp lacks."""
    folder = tmp_path_factory.mktemp("mixed")
    write_spelling_model(folder / "speller.gguf", "Hi")
    write_gguf(folder / "zfuture.gguf", arch="notanarch")
    home = tmp_path_factory.mktemp("home")
    server = ShimmyProcess(["--model-dirs", str(folder), "--parallel", "1", "--ctx", "256"],
                           isolated_env(home), home)
    yield server
    assert "Traceback" not in server.stop()


@pytest.mark.parametrize(("path", "body"), [
    ("/api/generate", {"prompt": "Hi"}),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
    ("/v1/messages", {"max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}),
])
def test_requests_for_a_model_that_cannot_load_get_the_apis_error(
        mixed_server: ShimmyProcess, path: str, body: dict) -> None:
    status, answer = request_json(mixed_server.port, "POST", path,
                                  {"model": "zfuture", **body})
    assert status == 500
    error = answer["error"]
    words = error["message"] + ": " + error.get("details", "")
    assert "'zfuture' could not be loaded" in words
    assert "'notanarch' is not one this llama.cpp" in words
    status, _ = request_json(mixed_server.port, "POST", "/api/generate",
                             {"model": "speller", "prompt": "Hi", "max_tokens": 2})
    assert status == 200  # the other model is served
