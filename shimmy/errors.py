"""The API's error shape: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error that reaches the client as JSON with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: str = "",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.param = param  # the request field at fault, for API families that report it

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ContextExceeded(ApiError):
    """A prompt longer than a slot's context; the sizes travel with it, so that each API
    can word the error as its clients expect."""

    def __init__(self, model: str, n_prompt: int, n_ctx: int, advice: str) -> None:
        super().__init__(400, "context_length_exceeded", "Prompt exceeds the context length",
                         f"The prompt has {n_prompt} tokens; the context of a slot of model "
                         f"'{model}' holds {n_ctx}. {advice}", "messages")
        self.model = model
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx
        self.advice = advice


def model_not_found(name: str) -> ApiError:
    return ApiError(
        404,
        "model_not_found",
        "The specified model was not found",
        f"Model '{name}' is not available",
    )


def invalid_request(details: str, message: str = "Request format is invalid",
                    param: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, details, param)


def not_found(path: str) -> ApiError:
    return ApiError(404, "not_found", "No such route", f"No route for path '{path}'")


def method_not_allowed(method: str, path: str, allowed: list[str]) -> ApiError:
    return ApiError(
        405,
        "method_not_allowed",
        "Method not allowed",
        f"{method} is not allowed on '{path}'; allowed: {', '.join(allowed)}",
    )


def generation_failed(details: str) -> ApiError:
    return ApiError(500, "generation_failed", "Text generation failed", details)


def server_error(details: str) -> ApiError:
    return ApiError(500, "server_error", "Internal server error", details)
