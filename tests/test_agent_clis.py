"""The real coding agents, unmodified, against ``shimmy serve``: Claude Code over the
Anthropic Messages API and Codex CLI over the OpenAI Responses API.

The CLIs come pinned from npm (tests/agent_clis.py; skipped when npm cannot install
them) and run offline with a private HOME. The embedded model is a small base model:
what it says is not checked, only that each agent finishes its turn cleanly (for Claude
Code, a base model that runs into the answer cap counts, see the test). Claude Code
runs with two tools and a short system prompt; its full 20k-token first request is
replayed in test_agent_requests.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import agent_clis
import pytest
from clients import request
from conftest import ShimmyProcess

AGENT_TIMEOUT = 1800  # seconds for one agent turn: the prompt, then up to 512 tokens
PROMPT = "Say hello"


@pytest.fixture(scope="module")
def agent_server(model_path: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimmyProcess]:
    process = agent_clis.serve_for_agents(model_path, tmp_path_factory.mktemp("agent-server"))
    status, _, body = request(process.port, "POST", "/api/generate",
                              {"prompt": "Hi", "max_tokens": 1})
    assert status == 200, body
    yield process
    process.stop()


def base_url(server: ShimmyProcess) -> str:
    return f"http://127.0.0.1:{server.port}"


def run_agent(command: list[str], env: dict[str, str], cwd: Path,
              server: ShimmyProcess) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=AGENT_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{command[0]} ran over {AGENT_TIMEOUT} s; stderr: {err.stderr!r}")
    assert server.proc.poll() is None, "shimmy serve died during the agent's turn"
    return done


def describe(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-4000:]}"


def test_claude_code_answers_in_print_mode(agent_server: ShimmyProcess, tmp_path: Path) -> None:
    claude = agent_clis.claude_code()
    workdir = tmp_path / "project"
    workdir.mkdir()
    env = agent_clis.claude_env(base_url(agent_server), tmp_path / "home")
    env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = "512"  # a base model may not stop by itself
    # two tools and a short system prompt: the first request is some 3k tokens, not
    # 20k (test_agent_requests.py replays a captured full-size one), so that the whole
    # CLI turn, tools included, takes a minute rather than many on two cores
    command = [str(claude), *agent_clis.claude_args(PROMPT, "claude-haiku-4-5"),
               "--max-turns", "3", "--tools", "Bash,Read",
               "--system-prompt", "You are a helpful assistant. Reply with one short sentence."]
    done = run_agent(command, env, workdir, agent_server)
    # The embedded model may not stop before the server's --n-predict cap: Claude Code then
    # reports the stream's stop_reason max_tokens in its own words and exits 1. Either way
    # it read the whole stream; any other error (a 4xx/5xx, a broken stream) fails here.
    hit_the_cap = done.returncode == 1 and done.stdout.startswith(
        "API Error: Claude's response exceeded the 512 output token maximum")
    assert done.returncode == 0 or hit_the_cap, describe(done)
    assert done.stdout.strip(), describe(done)
    assert hit_the_cap or "API Error" not in done.stdout, describe(done)


def test_codex_exec_answers(agent_server: ShimmyProcess, tmp_path: Path) -> None:
    codex = agent_clis.codex()
    workdir = tmp_path / "project"
    workdir.mkdir()
    env = agent_clis.codex_env(base_url(agent_server), tmp_path / "home", model="default",
                               context=agent_clis.AGENT_CONTEXT)
    done = run_agent([str(codex), *agent_clis.codex_args(PROMPT, workdir)], env, workdir,
                     agent_server)
    assert done.returncode == 0, describe(done)
    assert done.stdout.strip(), describe(done)  # codex exec prints the last message


def test_agent_helpers_isolate_the_machine(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "real-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "real-secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:1")
    claude = agent_clis.claude_env("http://127.0.0.1:1/", tmp_path / "a")
    codex = agent_clis.codex_env("http://127.0.0.1:1", tmp_path / "b")
    assert claude["ANTHROPIC_API_KEY"] == agent_clis.API_KEY
    assert claude["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:1"
    assert claude["HOME"] == str(tmp_path / "a")
    assert claude["CLAUDE_CONFIG_DIR"].startswith(str(tmp_path / "a"))
    assert "OPENAI_API_KEY" not in codex and "HTTPS_PROXY" not in codex
    config = (Path(codex["CODEX_HOME"]) / "config.toml").read_text()
    assert 'base_url = "http://127.0.0.1:1/v1"' in config
    assert 'wire_api = "responses"' in config and "requires_openai_auth = false" in config
