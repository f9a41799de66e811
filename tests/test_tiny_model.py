"""The spelling model loads in llama.cpp and drives the engine's text hand-off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tiny_model import (
    BOS,
    byte_token,
    expected_output,
    spellable,
    successors,
    write_spelling_model,
)

# Every byte distinct: 2-, 3- and 4-byte characters, no repeated lead or continuation byte.
TEXT = "Ω:wö 😀中!"
N_BYTES = len(TEXT.encode("utf-8"))  # 15
GREEDY = {"temperature": 0.0, "seed": 1}
Event = tuple[int, str, Any, int]


@pytest.fixture(scope="module")
def native() -> Any:
    from shimmy.engine import library

    return library.load()


@pytest.fixture(scope="module")
def model(native: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = write_spelling_model(tmp_path_factory.mktemp("tiny") / "speller.gguf", TEXT)
    return native.Model(str(path), 0, True, [])


@pytest.fixture(scope="module")
def looping(native: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("tiny") / "looping.gguf"
    return native.Model(str(write_spelling_model(path, TEXT, eos_after=False)), 0, True, [])


def engine(native: Any, model: Any) -> Any:
    """Two slots, one thread (ggml's spinning barrier makes 2 threads on a busy 2-core box slow)."""
    eng = native.BatchEngine(model, 256, 2, 1, 64)
    eng.warm_up()
    return eng


def run(eng: Any, starts: dict[int, tuple[list[int], list[str], int]]) -> dict[int, list[Event]]:
    """Start every slot, step until all finish; the events of each slot."""
    for slot, (prompt, stops, max_tokens) in starts.items():
        eng.start(slot, prompt, GREEDY, stops, max_tokens)
    events: dict[int, list[Event]] = {slot: [] for slot in starts}
    for _ in range(1000):
        for event in eng.step():
            events[event[0]].append(event)
        if all(ev and ev[-1][2] is not None for ev in events.values()):
            return events
    raise AssertionError("generation did not finish")


def generate(
    eng: Any, prompt: list[int], stops: tuple[str, ...] | list[str] = (), max_tokens: int = 100
) -> tuple[list[str], str]:
    events = run(eng, {0: (prompt, list(stops), max_tokens)})[0]
    return [e[1] for e in events], events[-1][2]


def test_precondition(tmp_path: Path) -> None:
    assert spellable(TEXT)
    assert not spellable("héllo")  # 'l' is followed by 'l' and by 'o'
    assert not spellable("éö")  # both start with 0xC3
    assert spellable("abab", eos_after=False) and not spellable("abab")
    with pytest.raises(ValueError):
        successors("")
    with pytest.raises(ValueError):
        write_spelling_model(tmp_path / "no.gguf", "a a")


def test_expected_output() -> None:
    data = TEXT.encode("utf-8")
    assert expected_output(TEXT) == data
    assert expected_output(TEXT, ord("w")) == data[data.index(b"w") + 1 :]
    assert expected_output(TEXT, eos_after=False, max_tokens=20) == (data * 2)[:20]


def test_model_metadata(native: Any, model: Any, tmp_path: Path) -> None:
    assert model.n_vocab == 259 and model.bos_token == BOS and model.is_eog(model.eos_token)
    assert model.tokenize("", True, False) == [BOS]
    assert model.tokenize("aé", True, False) == [BOS, byte_token(0x61), byte_token(0xC3),
                                                  byte_token(0xA9)]
    assert model.token_to_piece(byte_token(0xC3)) == b"\xc3"
    assert model.chat_template is None
    path = write_spelling_model(tmp_path / "t.gguf", "x", chat_template="{{ messages }}")
    assert native.Model(str(path), 0, True, []).chat_template == "{{ messages }}"


def test_spells_text_then_eos(native: Any, model: Any) -> None:
    events = run(engine(native, model), {0: ([BOS], [], 100)})[0]
    pieces = [e[1] for e in events]
    assert "".join(pieces) == TEXT
    assert events[-1][2] == "stop" and events[-1][3] == N_BYTES + 1  # the EOS counts
    assert all("\ufffd" not in p for p in pieces)
    assert "😀" in pieces and "中" in pieces and "ö" in pieces  # each whole in one piece


def test_any_prompt_without_text_bytes(native: Any, model: Any) -> None:
    prompt = model.tokenize("hello there, a long prompt", True, False)
    assert prompt[-1] == byte_token(ord("t"))
    assert _joined(generate(engine(native, model), prompt)) == (TEXT, "stop")


def test_prompt_ending_inside_text(native: Any, model: Any) -> None:
    eng = engine(native, model)
    pieces, reason = generate(eng, model.tokenize("Ω:w", True, False))
    assert "".join(pieces) == "ö 😀中!" and reason == "stop"
    # ends on a lead byte: the output starts with a lone continuation byte
    pieces, _ = generate(eng, [BOS, byte_token(0xCE)])
    assert "".join(pieces) == expected_output(TEXT, 0xCE).decode("utf-8", "replace")


def test_length_without_eos(native: Any, looping: Any) -> None:
    eng = engine(native, looping)
    assert "".join(generate(eng, [BOS], max_tokens=N_BYTES)[0]) == TEXT
    assert generate(eng, [BOS], max_tokens=N_BYTES)[1] == "length"
    pieces, reason = generate(eng, [BOS], max_tokens=2 * N_BYTES)
    assert "".join(pieces) == TEXT * 2 and reason == "length"


def test_stop_string(native: Any, model: Any) -> None:
    eng = engine(native, model)
    assert _joined(generate(eng, [BOS], ["wö"])) == ("Ω:", "stop")
    assert _joined(generate(eng, [BOS], ["😀"])) == ("Ω:wö ", "stop")
    assert _joined(generate(eng, [BOS], ["wörx"])) == (TEXT, "stop")
    assert _joined(generate(eng, [BOS], ["😀x", "!?"])) == (TEXT, "stop")


def test_stop_hold_back_releases_text(native: Any, model: Any) -> None:
    pieces, _ = generate(engine(native, model), [BOS], ["wörx"])
    assert "".join(pieces) == TEXT and all("\ufffd" not in p for p in pieces)
    assert "wö" not in pieces[:2]  # held back while it could still become the stop


def test_two_slots(native: Any, model: Any) -> None:
    events = run(engine(native, model), {0: ([BOS], [], 100), 1: ([BOS], ["中"], 100)})
    assert "".join(e[1] for e in events[0]) == TEXT
    assert "".join(e[1] for e in events[1]) == "Ω:wö 😀"
    assert events[0][-1][2] == events[1][-1][2] == "stop"


def _joined(result: tuple[list[str], str]) -> tuple[str, str]:
    return "".join(result[0]), result[1]
