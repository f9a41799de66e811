"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``.

The openai package picks its exception class from the status code
(400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 413/422 ...,
429 RateLimitError, 5xx InternalServerError), so statuses matter as much as the body.
"""

from __future__ import annotations

from typing import Any

from shimmy.errors import ApiError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error_body(error: ApiError) -> dict[str, Any]:
    message = f"{error.message}: {error.details}" if error.details else error.message
    fallback = "server_error" if error.status >= 500 else "invalid_request_error"
    kind = _TYPES.get(error.status, fallback)
    return {"error": {"message": message, "type": kind, "param": error.param, "code": error.code}}
