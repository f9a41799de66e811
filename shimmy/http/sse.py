"""Server-sent event framing for streamed responses."""

from __future__ import annotations

import json
from typing import Any

SSE_DONE = b"data: [DONE]\n\n"
SSE_PING = b": ping\n\n"
TEXT_SLOT = "\x00text\x00"  # where ``TextEvents`` puts each event's text


def sse_data(obj: Any) -> bytes:
    """One ``data:`` event holding ``obj`` as compact JSON."""
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return b"data: " + payload.encode() + b"\n\n"


class TextEvents:
    """Events that differ only in one string, the streamed text: the JSON around it is
    encoded once per stream, and each token costs one string's encoding.

    ``template`` is the event's object with ``TEXT_SLOT`` as the value that varies.
    """

    def __init__(self, template: Any) -> None:
        slot = json.dumps(TEXT_SLOT).encode()
        self._head, self._tail = sse_data(template).split(slot)

    def event(self, text: str) -> bytes:
        return self._head + json.dumps(text, ensure_ascii=False).encode() + self._tail
