"""The two engine profiles: ``fast`` (the default) and ``--deterministic`` (invariant).

Both must give a request alone the same text each time, reuse a cached prompt, and say
which profile runs in ``probe``, ``diag --json`` and ``/metrics``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import request
from conftest import ShimmyProcess, isolated_env, rows_round_alike

# the fast profile runs llama.cpp's flash attention over its f16 cache unless told not to
PROFILES = {"fast": [], "fast-plain": ["--flash-attn", "off"], "invariant": ["--deterministic"]}
# about 1,300 tokens: more than two of the fast profile's 512-token chunks
LONG_PROMPT = " ".join(f"Item {i}: the {w} is kept in drawer {i % 7}."
                       for i, w in enumerate(["lamp", "key", "map", "cup", "pen"] * 24))


def profile_name(key: str) -> str:
    return "invariant" if key == "invariant" else "fast"


def run_json(home: Path, *args: str, **env: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "shimmy", *args, "--json"],
                            capture_output=True, text=True, timeout=120,
                            env=isolated_env(home, **env), cwd=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", PROFILES)
def test_probe_and_diag_name_the_profile(name: str, tmp_path: Path) -> None:
    probed = run_json(tmp_path, "probe", "--ctx", "512", "--parallel", "2", *PROFILES[name])
    profile = probed["engine_profile"]
    assert profile["name"] == profile_name(name)
    assert profile["checked"]["invariant"] is (name == "invariant")
    # flash attention over the fast profile's f16 cache unless turned off; the
    # invariant profile's bf16 cache always runs it
    assert profile["attention"] == ("plain" if name == "fast-plain" else "flash")
    # the fast profile packs every busy slot into one pass; the invariant one only
    # where the load-time check finds rows rounding alike
    assert profile["packed"] is (name != "invariant" or profile["exact_rows"])
    assert profile["reuse_unit"] == (1 if profile["exact_rows"] else 64)
    assert profile["prompt_rows"] == (64 if name == "invariant" else 256)
    diag = run_json(tmp_path, "diag", *PROFILES[name])
    assert diag["llama_cpp"]["engine_profile"]["name"] == profile_name(name)
    assert diag["llama_cpp"]["engine_profile"]["tiled_kquant_kernel"] == \
        ("off" if name == "invariant" else "on")


def test_the_environment_variable_asks_for_the_invariant_profile(tmp_path: Path) -> None:
    probed = run_json(tmp_path, "probe", "--ctx", "512", SHIMMY_DETERMINISTIC="1")
    assert probed["engine_profile"]["name"] == "invariant"


@pytest.fixture(scope="module", params=list(PROFILES))
def profile_server(request: pytest.FixtureRequest, model_path: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    home = tmp_path_factory.mktemp("home")
    process = ShimmyProcess(["--model-path", str(model_path), "--parallel", "2",
                             "--ctx", "2048", "--keep-alive", "-1", *PROFILES[request.param]],
                            isolated_env(home), home)
    yield request.param, process.port
    process.stop()


def complete(port: int, prompt: str, **fields: object) -> dict:
    status, _, body = request(port, "POST", "/v1/completions",
                              {"model": "default", "prompt": prompt, "max_tokens": 24,
                               **fields})
    assert status == 200, body
    return json.loads(body)


def test_a_request_alone_gives_the_same_text_each_time(profile_server: tuple[str, int]) -> None:
    _, port = profile_server
    sampled = {"temperature": 0.9, "seed": 1234}
    cold = complete(port, LONG_PROMPT, **sampled)
    warm = complete(port, LONG_PROMPT, **sampled)  # reads its prompt from the cache
    assert warm["choices"][0]["text"] == cold["choices"][0]["text"]
    cached = warm["usage"]["prompt_tokens_details"]["cached_tokens"]
    prompt_tokens = warm["usage"]["prompt_tokens"]
    assert cached > 0
    # a prefix is reused whole chunks at a time, so the rest is read as a cold start does
    assert cached == prompt_tokens - 1 or cached % 64 == 0
    assert complete(port, "The sky is", temperature=0)["choices"][0]["text"].strip()


def test_a_chats_next_turn_reuses_the_answer_in_the_fast_profile(
        profile_server: tuple[str, int]) -> None:
    """The fast profile reuses the first turn's answer cells, as llama-server does, and
    reads only what is new; the invariant profile reads them again, in the chunks a cold
    start reads, unless rows round alike. Either way the same turn asked again gives the
    same text."""
    name, port = profile_server
    first = complete(port, LONG_PROMPT, temperature=0)
    turn = LONG_PROMPT + first["choices"][0]["text"] + "\nQuestion: where is the last key?"
    answer = complete(port, turn, temperature=0)
    again = complete(port, turn, temperature=0)
    assert again["choices"][0]["text"] == answer["choices"][0]["text"]
    cached = answer["usage"]["prompt_tokens_details"]["cached_tokens"]
    if name == "invariant" and not rows_round_alike():
        assert cached % 64 == 0 and 0 < cached <= first["usage"]["prompt_tokens"]
    else:
        assert cached > first["usage"]["prompt_tokens"]


def test_metrics_name_the_profile(profile_server: tuple[str, int]) -> None:
    name, port = profile_server
    complete(port, "Hello", max_tokens=1)
    status, _, body = request(port, "GET", "/metrics")
    assert status == 200
    lines = [line for line in body.decode().splitlines()
             if line.startswith("shimmy_engine_profile{")]
    assert lines and all(f'profile="{profile_name(name)}"' in line for line in lines), lines
