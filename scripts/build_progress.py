#!/usr/bin/env python3
"""Run a long build (llama.cpp's ``cmake --build`` from scripts/llama_wheel.py, or a
``pip wheel -v``), keep its whole output in a log file, and show how far it is instead of
its thousands of lines.

    build_progress.py --log FILE [--what NAME] -- COMMAND...

The step comes from scikit-build-core's ``*** ...`` lines (configuring, compiling,
installing, making the wheel), how far from ninja's ``[n/N]`` (or make's ``[ xx%]``)
lines, and the time left from the pace of the compile steps so far. On a terminal the
status is one line redrawn in place; elsewhere (CI logs) a line every 15 seconds and at
each new step. On failure the last lines of the log and its path are printed. Exits
with the command's status. Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

PLAIN_EVERY_SECONDS = 15.0
TERMINAL_EVERY_SECONDS = 0.5
TAIL_LINES = 30
NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")
MAKE_PERCENT = re.compile(r"^\[\s*(\d+)%\]")
# (what a line starts with, once stripped; the step it begins)
PHASE_MARKERS = (
    ("Collecting ", "fetching the source"),
    ("Downloading ", "fetching the source"),
    ("Installing build dependencies", "installing build tools"),
    ("Running command pip subprocess to install build dependencies",
     "installing build tools"),
    ("Running command Preparing metadata", "reading the package"),
    ("*** Configuring CMake", "configuring"),
    ("*** Building project", "compiling"),
    ("*** Installing project", "installing"),
    ("*** Making wheel", "making the wheel"),
    ("*** Created", "done"),
)

PHASE_RANK = {phase: rank for rank, phase in enumerate(
    ["starting", *dict.fromkeys(phase for _, phase in PHASE_MARKERS)])}


@dataclass
class BuildProgress:
    """What the output so far says: the step, and in the compile step its counts."""

    phase: str = "starting"
    done: int = 0  # compile steps finished
    total: int = 0  # compile steps in all; 0 while unknown
    percent: int | None = None  # make's own percentage, where make builds
    counting_since: tuple[float, int] | None = None  # (time, done) at the first step seen

    def read(self, line: str, now: float) -> bool:
        """Take one line of output; whether the step changed."""
        text = line.strip()
        for start, phase in PHASE_MARKERS:
            # steps only go forward: pip also says "Collecting" of the build tools
            if text.startswith(start) and PHASE_RANK[phase] > PHASE_RANK[self.phase]:
                self.phase = phase
                return True
        if match := NINJA_STEP.match(text):
            self._count(int(match.group(1)), int(match.group(2)), now)
        elif match := MAKE_PERCENT.match(text):
            self.percent = int(match.group(1))
            if PHASE_RANK[self.phase] < PHASE_RANK["compiling"]:
                self.phase = "compiling"
        return False

    def _count(self, done: int, total: int, now: float) -> None:
        if total != self.total:  # a new ninja run: its pace starts afresh
            self.counting_since = None
        self.done, self.total = done, total
        if PHASE_RANK[self.phase] < PHASE_RANK["compiling"]:
            self.phase = "compiling"
        if self.counting_since is None:
            self.counting_since = (now, done)

    @property
    def fraction(self) -> float | None:
        if self.total:
            return self.done / self.total
        return self.percent / 100 if self.percent is not None else None

    def seconds_left(self, now: float) -> float | None:
        """The compile steps left at the pace of those done since counting began."""
        if self.counting_since is None or not self.total:
            return None
        since, first = self.counting_since
        steps = self.done - first
        if steps < 5 or now <= since:
            return None  # too few steps for a pace worth quoting
        return (self.total - self.done) * (now - since) / steps

    def words(self, now: float, elapsed: float) -> str:
        """``compiling 412/1290 (32%), about 21 min left, 6 min 3 s so far``."""
        parts = [self.phase]
        if self.phase == "compiling" and self.total:
            parts[0] += f" {self.done}/{self.total} ({self.done / self.total:.0%})"
        elif self.phase == "compiling" and self.percent is not None:
            parts[0] += f" ({self.percent}%)"
        if self.phase == "compiling" and (left := self.seconds_left(now)) is not None:
            parts.append(f"about {duration(left, round_to=60 if left > 120 else 10)} left")
        parts.append(f"{duration(elapsed)} so far")
        return ", ".join(parts)


def duration(seconds: float, round_to: int = 1) -> str:
    """``17 min 3 s``, ``45 s``; ``round_to`` seconds (60: ``about 12 min``)."""
    seconds = max(0, round(seconds / round_to) * round_to)
    minutes, rest = divmod(int(seconds), 60)
    if not minutes:
        return f"{rest} s"
    return f"{minutes} min" if round_to >= 60 or not rest else f"{minutes} min {rest} s"


class StatusLine:
    """Writes the status: redrawn in place on a terminal, else every so often."""

    def __init__(self, what: str, stream: TextIO, terminal: bool) -> None:
        self.what = what
        self.stream = stream
        self.terminal = terminal
        self.every = TERMINAL_EVERY_SECONDS if terminal else PLAIN_EVERY_SECONDS
        self.last_shown = -self.every

    def show(self, progress: BuildProgress, now: float, elapsed: float,
             force: bool = False) -> None:
        if not force and now - self.last_shown < self.every:
            return
        self.last_shown = now
        text = f"{self.what}: {progress.words(now, elapsed)}"
        if self.terminal:
            self.stream.write(f"\r\033[K{text}")
        else:
            self.stream.write(f"{text}\n")
        self.stream.flush()

    def end(self) -> None:
        if self.terminal:
            self.stream.write("\r\033[K")
            self.stream.flush()


def run(command: list[str], log_path: Path, what: str, stream: TextIO = sys.stderr) -> int:
    """Run ``command``, its output into ``log_path``, its progress onto ``stream``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    progress, tail = BuildProgress(), deque(maxlen=TAIL_LINES)
    status = StatusLine(what, stream, bool(getattr(stream, "isatty", lambda: False)()))
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", bufsize=1) as child:
        for line in child.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            now = time.monotonic()
            new_step = progress.read(line, now)
            status.show(progress, now, now - started, force=new_step)
        code = child.wait()
    status.end()
    elapsed = duration(time.monotonic() - started)
    if code == 0:
        stream.write(f"{what}: built in {elapsed}; its log: {log_path}\n")
    else:
        stream.write(f"{what}: the build failed (exit status {code}) after {elapsed} "
                     f"({progress.phase}). Its last lines:\n")
        stream.writelines(f"  {line}\n" for line in tail)
        stream.write(f"The whole log: {log_path}\n")
    stream.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, required=True, help="file for the whole output")
    parser.add_argument("--what", default="build", help="what is built, for the status")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    return run(command, args.log, args.what)


if __name__ == "__main__":
    sys.exit(main())
