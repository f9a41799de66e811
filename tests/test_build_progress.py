"""scripts/build_progress.py: the step, the counts and the time left of a llama.cpp
wheel build, read from a sample of `pip wheel -v` output (pip, scikit-build-core and
ninja's lines as they print them), and the wrapper that keeps the log."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "llama_cpp_wheel_build.log"
STEPS = 49  # the sample's ninja steps


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_progress",
                                                  REPO / "scripts" / "build_progress.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_progress"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


build_progress = _load()


def replay(lines: list[str], seconds_per_line: float = 2.0):
    """The progress after each line, the lines read one every ``seconds_per_line``."""
    progress = build_progress.BuildProgress()
    for index, line in enumerate(lines):
        changed = progress.read(line, index * seconds_per_line)
        yield index * seconds_per_line, line, changed, progress


def test_the_steps_follow_the_build_in_order() -> None:
    lines = SAMPLE.read_text().splitlines()
    phases = [progress.phase for _, _, changed, progress in replay(lines) if changed]
    assert phases == ["fetching the source", "installing build tools", "reading the package",
                      "configuring", "compiling", "installing", "making the wheel", "done"]


def test_the_compile_counts_come_from_ninja() -> None:
    lines = SAMPLE.read_text().splitlines()
    seen = [(p.done, p.total) for _, line, _, p in replay(lines) if line.lstrip().startswith("[")]
    assert seen == [(n, STEPS) for n in range(1, STEPS + 1)]
    *_, (_, _, _, last) = replay(lines)
    assert last.phase == "done" and last.fraction == 1.0


def test_the_time_left_follows_the_pace_of_the_steps() -> None:
    lines = SAMPLE.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("[1/"))
    at_ten = first + 10  # 10 steps read, one every 2 s (the sample has no lines between)
    *_, (now, _, _, progress) = replay(lines[: at_ten + 1])
    assert progress.done == 11
    # 10 steps in 20 s since the first: 38 to go at 2 s each
    assert progress.seconds_left(now) == pytest.approx(76.0)
    assert progress.words(now, elapsed=300.0) == (
        f"compiling 11/{STEPS} (22%), about 1 min 20 s left, 5 min so far")
    progress.read(f"[12/{STEPS * 10}] cc -c x.c", now + 2)  # longer: round to minutes
    assert progress.words(now + 2, elapsed=302.0).startswith(
        f"compiling 12/{STEPS * 10} (2%), ")


def test_no_time_left_is_guessed_from_too_few_steps() -> None:
    progress = build_progress.BuildProgress()
    progress.read("  [1/300] cc -c a.c", 10.0)
    progress.read("  [2/300] cc -c b.c", 11.0)
    assert progress.seconds_left(12.0) is None
    assert progress.words(12.0, 40.0) == "compiling 2/300 (1%), 40 s so far"


def test_make_percentages_count_too() -> None:
    progress = build_progress.BuildProgress()
    progress.read("[ 42%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o", 1.0)
    assert progress.phase == "compiling" and progress.fraction == pytest.approx(0.42)
    assert progress.words(1.0, 75.0) == "compiling (42%), 1 min 15 s so far"


def test_durations_read_naturally() -> None:
    assert build_progress.duration(45.4) == "45 s"
    assert build_progress.duration(1023) == "17 min 3 s"
    assert build_progress.duration(1023, round_to=60) == "17 min"


def _fake_build(tmp_path: Path, status: int) -> list[str]:
    """A command that prints the sample (as the real build would) and exits ``status``."""
    return [sys.executable, "-c",
            f"import sys; sys.stdout.write(open({str(SAMPLE)!r}).read()); sys.exit({status})"]


def test_a_build_keeps_its_whole_log_and_shows_a_few_lines(tmp_path: Path) -> None:
    log, shown = tmp_path / "logs" / "build.log", io.StringIO()
    assert build_progress.run(_fake_build(tmp_path, 0), log, "llama.cpp", shown) == 0
    assert log.read_text() == SAMPLE.read_text()
    lines = shown.getvalue().splitlines()
    # not a terminal: one line per new step (the clock allows no more), then the result
    assert len(lines) <= 12, lines
    assert lines[0].startswith("llama.cpp: ")
    # the step is shown before ninja counts; the fake build's clock stays under 15 s
    assert any(re.fullmatch(r"llama\.cpp: compiling, \d+ s so far", line) for line in lines)
    assert lines[-1].startswith("llama.cpp: built in ") and str(log) in lines[-1]


def test_a_failed_build_shows_its_last_lines_and_where_the_log_is(tmp_path: Path) -> None:
    log, shown = tmp_path / "build.log", io.StringIO()
    assert build_progress.run(_fake_build(tmp_path, 3), log, "llama.cpp", shown) == 3
    text = shown.getvalue()
    assert re.search(r"^llama\.cpp: the build failed \(exit status 3\) after \d+ s \(done\)",
                     text, re.M), text
    assert "Successfully built llama-cpp-python" in text  # the log's last line, shown
    assert text.rstrip().endswith(f"The whole log: {log}")
