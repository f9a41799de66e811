"""Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``.

The anthropic package picks its exception class from the status (400 BadRequestError,
401 AuthenticationError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError),
so the status matters as much as the body.
"""

from __future__ import annotations

import re
from typing import Any

from shimmy.errors import ApiError

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_PROMPT_SIZES = re.compile(
    r"The prompt has (\d+) tokens; a slot of model '([^']*)' holds (\d+)\.?\s*(.*)", re.S)


def anthropic_error_body(error: ApiError) -> dict[str, Any]:
    """The body for ``error``; an over-long prompt reads as Anthropic words it
    ("prompt is too long: N tokens > M maximum"), which Claude Code recognises."""
    message = f"{error.message}: {error.details}" if error.details else error.message
    if error.code == "context_length_exceeded":
        message = _too_long(error) or message
    fallback = "api_error" if error.status >= 500 else "invalid_request_error"
    kind = _ERROR_TYPES.get(error.status, fallback)
    return {"type": "error", "error": {"type": kind, "message": message}}


def _too_long(error: ApiError) -> str | None:
    sizes = _PROMPT_SIZES.search(error.details)
    if sizes is None:
        return None
    prompt, model, context, advice = sizes.groups()
    return (f"prompt is too long: {prompt} tokens > {context} maximum (a slot of model "
            f"'{model}' holds {context} tokens). {advice}").rstrip(". ") + "."
