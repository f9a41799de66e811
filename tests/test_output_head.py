"""The output head (``shimmy/engine/output_head.h``) gives llama.cpp's logits bit for bit.

Where the CPU has AVX-512 VNNI and the output matrix is Q8_0, as the embedded model's is,
shimmy computes the last matrix product of a step itself. These tests run one engine
with it and one without, on the same requests, and compare the log-probability of every
generated token, which differs at the first changed rounding.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import isolated_env

WORDS = ["river", "mountain", "ocean", "forest", "desert", "city", "village", "garden",
         "bridge", "tower", "castle", "harbor", "valley", "island", "meadow", "canyon"]
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
GREEDY = {"temperature": 0.0}
MAX_TOKENS = 12
SLOTS = 6


@pytest.fixture(scope="module")
def native() -> Any:
    from shimmy.engine import library

    return library.load()


@pytest.fixture(scope="module")
def model(native: Any, model_path: Path) -> Any:
    return native.Model(str(model_path), 0, True, [])


def engine(native: Any, model: Any, own_head: bool, kv_type: str = "bf16") -> Any:
    eng = native.BatchEngine(model, 512, SLOTS, 2, 64, kv_type, 3, True, own_head)
    eng.warm_up()
    return eng


def prompt(model: Any, seed: int) -> list[int]:
    rng = random.Random(seed)
    return model.tokenize(" ".join(rng.choice(WORDS) for _ in range(5 + seed * 7)), True, False)


def traces(eng: Any, prompts: list[list[int]], sampling: dict) -> list[list[tuple[int, float]]]:
    """All prompts started together, each seeded by its length; each one's (token,
    logprob) for every generated token, with 3 alternatives' logprobs folded in."""
    out: list[list[tuple[int, float]]] = [[] for _ in prompts]
    for slot, tokens in enumerate(prompts):
        eng.start(slot, tokens, dict(sampling, seed=len(tokens)), [], MAX_TOKENS, True, 3)
    finished: set[int] = set()
    for _ in range(500):
        for slot, _text, finish, _n, logprobs, _stop in eng.step():
            for entry in logprobs or ():
                out[slot].append((entry[0], entry[2]))
                out[slot].extend((alt[0], alt[2]) for alt in entry[3])
            if finish is not None:
                finished.add(slot)
        if len(finished) == len(prompts):
            return out
    raise AssertionError("generation did not finish")


@pytest.fixture
def head_cpu(native: Any) -> None:
    if not native.output_head_supported():
        pytest.skip("this CPU has no AVX-512 VNNI: ggml computes the logits")


@pytest.mark.usefixtures("head_cpu")
@pytest.mark.parametrize("kv_type", ["bf16", "f16"])
def test_warm_up_finds_the_head_equal_to_ggml_and_keeps_it(native: Any, model: Any,
                                                            kv_type: str) -> None:
    eng = engine(native, model, True, kv_type)
    single, several, differing = eng.head_checks
    assert single >= 1 and several >= 2 and differing == 0
    assert eng.own_head
    before = eng.head_rows
    traces(eng, [prompt(model, 1)], GREEDY)
    assert eng.head_rows - before >= MAX_TOKENS  # one row a step at least


@pytest.mark.usefixtures("head_cpu")
@pytest.mark.parametrize("sampling", [GREEDY, SAMPLING], ids=["greedy", "sampled"])
def test_logprobs_equal_ggmls_alone_and_in_company(native: Any, model: Any,
                                                   sampling: dict) -> None:
    own, ggml = engine(native, model, True), engine(native, model, False)
    assert own.own_head and not ggml.own_head and ggml.head_rows == 0
    alone = [prompt(model, 2)]
    company = [prompt(model, seed) for seed in range(SLOTS)]
    assert traces(own, alone, sampling) == traces(ggml, alone, sampling)
    with_head = traces(own, company, sampling)
    assert with_head == traces(ggml, company, sampling)
    assert all(len(trace) == MAX_TOKENS * 4 for trace in with_head)


def test_without_the_head_ggml_computes_every_logit(native: Any, model: Any) -> None:
    eng = engine(native, model, False)
    assert not eng.own_head
    assert eng.head_checks == (0, 0, 0)
    traces(eng, [prompt(model, 3)], GREEDY)
    assert eng.head_rows == 0


def test_a_float_output_matrix_stays_with_ggml(native: Any, tmp_path: Path) -> None:
    """The tiny model's output matrix is F32: the head is never asked to compute it, so
    warm-up compares nothing and leaves the logits to ggml, which spell the text."""
    from tiny_model import write_spelling_model

    text = "head"
    tiny = native.Model(str(write_spelling_model(tmp_path / "speller.gguf", text)), 0, True, [])
    eng = native.BatchEngine(tiny, 256, 2, 1, 64, "bf16", 0, True, True)
    eng.warm_up()
    assert not eng.own_head and eng.head_checks == (0, 0, 0)
    eng.start(0, tiny.tokenize("", True, False), dict(GREEDY), [], 16)
    spelled = b""
    for _ in range(40):
        for _slot, piece, finish, _n, _logprobs, _stop in eng.step():
            spelled += piece.encode() if isinstance(piece, str) else piece
            if finish is not None:
                assert spelled.decode() == text and eng.head_rows == 0
                return
    raise AssertionError("generation did not finish")


@pytest.mark.usefixtures("head_cpu")
def test_probe_says_whose_product_gives_the_logits(model_path: Path, tmp_path: Path) -> None:
    def probe(**env: str) -> str:
        result = subprocess.run([sys.executable, "-m", "shimmy", "probe", "--model-path",
                                 str(model_path)], capture_output=True, text=True, timeout=120,
                                env=isolated_env(tmp_path, **env), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert re.search(r"^output head:\s+shimmy's \(its logits equal llama\.cpp's bit for bit "
                     r"at load\)$", probe(), re.M)
    assert re.search(r"^output head:\s+llama\.cpp's \(SHIMMY_OUTPUT_HEAD=ggml\)$",
                     probe(SHIMMY_OUTPUT_HEAD="ggml"), re.M)
