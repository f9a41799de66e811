"""Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``.

The anthropic package picks its exception class from the status (400 BadRequestError,
401 AuthenticationError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError),
so the status matters as much as the body.
"""

from __future__ import annotations

from typing import Any

from shimmy.errors import ApiError, ContextExceeded

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



def anthropic_error_body(error: ApiError) -> dict[str, Any]:
    """The body for ``error``; an over-long prompt reads as Anthropic words it
    ("prompt is too long: N tokens > M maximum"), which Claude Code recognises."""
    message = f"{error.message}: {error.details}" if error.details else error.message
    if isinstance(error, ContextExceeded):
        message = (f"prompt is too long: {error.n_prompt} tokens > {error.n_ctx} maximum (a "
                   f"slot of model '{error.model}' holds {error.n_ctx} tokens). {error.advice}.")
    fallback = "api_error" if error.status >= 500 else "invalid_request_error"
    kind = _ERROR_TYPES.get(error.status, fallback)
    return {"type": "error", "error": {"type": kind, "message": message}}
