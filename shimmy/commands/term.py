"""Terminal output for the commands: colour only on a terminal and never with NO_COLOR,
errors that say what to do next, and an elapsed-time line while a model loads."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

_STYLES = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}


def color_enabled(stream: TextIO) -> bool:
    # https://no-color.org: NO_COLOR set to anything but the empty string turns colour off
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, style: str, stream: TextIO | None = None) -> str:
    """``text`` in ``style`` when ``stream`` (stdout by default) shows colour."""
    if not color_enabled(stream or sys.stdout):
        return text
    return f"\033[{_STYLES[style]}m{text}\033[0m"


def error(message: str, hint: str | None = None) -> None:
    """``error: message`` on stderr, then what to do about it."""
    print(f"{paint('error:', 'red', sys.stderr)} {message}", file=sys.stderr)
    if hint:
        print(textwrap.indent(hint, "  "), file=sys.stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


class LoadingLine:
    """``loading NAME... 42% 2.4 s`` on stderr, redrawn while a model loads; terminal
    only. ``fraction`` tells how far the load is (None: not begun), as llama.cpp's
    progress callback reports the weights read; without it the line shows time only."""

    def __init__(self, what: str, stream: TextIO | None = None, enabled: bool = True,
                 fraction: Callable[[], float | None] | None = None) -> None:
        self.what = what
        self.fraction = fraction
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = enabled and bool(isatty and isatty())
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._frames = _spinner_frames(self.stream)

    def __enter__(self) -> LoadingLine:
        if self.enabled:
            self._started = time.monotonic()
            self._draw(0)  # at once: however fast the load, the line was there
            self._thread = threading.Thread(target=self._redraw, name="loading-line",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._thread is not None:
            self._done.set()
            self._thread.join()
            self.stream.write("\r\033[K")  # leave the line clean for what follows
            self.stream.flush()

    def _redraw(self) -> None:
        tick = 1
        while not self._done.wait(0.1):
            self._draw(tick)
            tick += 1

    def _draw(self, tick: int) -> None:
        frames = self._frames
        elapsed = time.monotonic() - self._started
        fraction = self.fraction() if self.fraction is not None else None
        share = f"{fraction:4.0%} " if fraction is not None else ""
        self.stream.write(f"\r{frames[tick % len(frames)]} loading {self.what}... "
                          f"{share}{elapsed:.1f} s\033[K")
        self.stream.flush()


def _spinner_frames(stream: TextIO) -> str:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" if encoding == "utf8" else "|/-\\"
