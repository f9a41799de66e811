"""Reading request fields: types, ranges and defaults, with errors that name the field."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from shimmy.engine.pool import parse_keep_alive
from shimmy.engine.scheduler import Sampling
from shimmy.errors import invalid_request

MAX_STOP_STRINGS = 16


@dataclass(slots=True)
class GenerateParams:
    model: str
    prompt: str | None  # None: only load or unload the model, as ``keep_alive`` says
    max_tokens: int
    stream: bool
    stop: list[str]
    sampling: Sampling
    ignore_eos: bool
    keep_alive: float | None = None  # seconds; None: the server's --keep-alive


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid_request(f"The request body must be a JSON object, not {_kind(body)}")
    return body


def string(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key)
    if value is None:
        value = default
    if value is None:
        raise invalid_request(f"'{key}' is required", param=key)
    if not isinstance(value, str):
        raise invalid_request(f"'{key}' must be a string, not {_kind(value)}", param=key)
    return value


def integer(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_request(f"'{key}' must be an integer, not {_kind(value)}", param=key)
    if not low <= value <= high:
        raise invalid_request(f"'{key}' must be between {low} and {high}, got {value}", param=key)
    return value


def number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid_request(f"'{key}' must be a number, not {_kind(value)}", param=key)
    if not low <= value <= high:
        raise invalid_request(f"'{key}' must be between {low} and {high}, got {value}", param=key)
    return float(value)


def boolean(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid_request(f"'{key}' must be true or false, not {_kind(value)}", param=key)
    return value


def stop_strings(body: dict[str, Any], key: str = "stop") -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid_request(f"'{key}' must be a string or a list of strings", param=key)
    if len(items) > MAX_STOP_STRINGS:
        raise invalid_request(f"'{key}' has {len(items)} entries; at most {MAX_STOP_STRINGS}",
                              param=key)
    return [s for s in items if s]


def seed(body: dict[str, Any]) -> int:
    value = integer(body, "seed", -1, -1, 2**32 - 2)
    return secrets.randbits(31) if value == -1 else value


def logit_bias(body: dict[str, Any], n_vocab: int | None = None) -> dict[int, float]:
    value = body.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_request("'logit_bias' must be an object mapping token ids to biases",
                              param="logit_bias")
    biases: dict[int, float] = {}
    for token, bias in value.items():
        try:
            token_id = int(token)
        except ValueError:
            raise invalid_request(f"'logit_bias' key '{token}' is not a token id",
                                  param="logit_bias") from None
        if token_id < 0 or (n_vocab is not None and token_id >= n_vocab):
            raise invalid_request(f"'logit_bias' token id {token_id} is out of range",
                                  param="logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, int | float):
            raise invalid_request(f"'logit_bias' value for {token} must be a number",
                                  param="logit_bias")
        biases[token_id] = max(-100.0, min(100.0, float(bias)))
    return biases


def keep_alive(body: dict[str, Any]) -> float | None:
    """Ollama's ``keep_alive``: seconds, or a duration such as "5m"; negative is forever
    (``math.inf``), 0 unloads the model after this request. None when not given."""
    value = body.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid_request("'keep_alive' must be a duration such as \"5m\" or a number of "
                              f"seconds, not {_kind(value)}", param="keep_alive")
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise invalid_request(f"'keep_alive': {exc}", param="keep_alive") from None


def sampling(body: dict[str, Any], temperature: float = 0.7, top_p: float = 0.95) -> Sampling:
    """The sampling fields shared by every generation route (defaults differ by family)."""
    return Sampling(
        temperature=number(body, "temperature", temperature, 0.0, 2.0),
        top_k=integer(body, "top_k", 40, 0, 1_000_000),
        top_p=number(body, "top_p", top_p, 0.0, 1.0),
        min_p=number(body, "min_p", 0.05, 0.0, 1.0),
        repeat_penalty=number(body, "repeat_penalty", 1.0, 0.0, 10.0),
        frequency_penalty=number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=number(body, "presence_penalty", 0.0, -2.0, 2.0),
        penalty_last_n=integer(body, "repeat_last_n", 64, 0, 1_000_000),
        seed=seed(body),
        logit_bias=logit_bias(body),
    )


def generate_params(body: Any) -> GenerateParams:
    """Fields of ``POST /api/generate`` and the WebSocket request."""
    body = require_object(body)
    keep = keep_alive(body)
    if body.get("prompt") is None and keep is not None:
        return load_or_unload_params(body, keep)
    if "prompt" not in body:
        raise invalid_request("'prompt' is required", param="prompt")
    return GenerateParams(
        model=string(body, "model", "default") or "default",
        prompt=string(body, "prompt"),
        max_tokens=integer(body, "max_tokens", 100, 1, 1_000_000),
        stream=boolean(body, "stream", False),
        stop=stop_strings(body),
        sampling=sampling(body),
        ignore_eos=boolean(body, "ignore_eos", False),
        keep_alive=keep,
    )


def load_or_unload_params(body: dict[str, Any], keep: float) -> GenerateParams:
    """Ollama's way to load a model (or, with ``keep_alive`` 0, unload it): no prompt."""
    return GenerateParams(model=string(body, "model", "default") or "default", prompt=None,
                          max_tokens=0, stream=False, stop=[], sampling=Sampling(),
                          ignore_eos=False, keep_alive=keep)


def _kind(value: Any) -> str:
    return {
        dict: "an object", list: "an array", str: "a string", bool: "a boolean",
        int: "a number", float: "a number", type(None): "null",
    }.get(type(value), type(value).__name__)
