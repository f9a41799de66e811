"""Server-sent event framing for streamed responses."""

from __future__ import annotations

import json
from typing import Any

SSE_DONE = b"data: [DONE]\n\n"
SSE_PING = b": ping\n\n"


def sse_data(obj: Any) -> bytes:
    """One ``data:`` event holding ``obj`` as compact JSON."""
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return b"data: " + payload.encode() + b"\n\n"
