"""Request fields that Ollama's chat and generate share: stream, think, format, keep_alive."""

from __future__ import annotations

from typing import Any

from shimmy.api import params
from shimmy.api.ollama.common import bad_request
from shimmy.chat.prompt import template_thinks
from shimmy.engine.loaded import LoadedModel
from shimmy.errors import ApiError

THINK_LEVELS = ("low", "medium", "high", "max")


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def stream(body: dict[str, Any]) -> bool:
    """Ollama streams unless told ``"stream": false``."""
    value = body.get("stream")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise bad_request(_type_error("stream", "bool", value))
    return value


def string(body: dict[str, Any], key: str) -> str:
    """An optional string field ("" when absent)."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(_type_error(key, "string", value))
    return value


def flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(_type_error(key, "bool", value))
    return value


def keep_alive(body: dict[str, Any]) -> float | None:
    try:
        return params.keep_alive(body)
    except ApiError as exc:
        raise bad_request(exc.details) from None


def think(body: dict[str, Any]) -> tuple[bool | None, str | None]:
    """``think``: true, false, or an effort ("low", "medium", "high"); None when absent.
    Returns the switch and the effort."""
    value = body.get("think")
    if value is None or isinstance(value, bool):
        return value, None
    if isinstance(value, str) and value in THINK_LEVELS:
        return True, "high" if value == "max" else value
    raise bad_request(f"invalid think value: {value!r} (must be true, false, \"low\", "
                      "\"medium\" or \"high\")")


def check_thinking(model: LoadedModel, name: str, wanted: bool | None) -> None:
    """Ollama refuses ``think`` for a model that does not think."""
    if wanted and not template_thinks(model.chat_template):
        raise bad_request(f'"{name}" does not support thinking')


def response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """``format``: "json", a JSON schema, or nothing; as the chat layer's response_format."""
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "schema": value}
    raise bad_request(f'invalid format: {value!r}: expected "json" or a JSON schema object')


def grammar(fmt: dict[str, Any] | None) -> str | None:
    """The GBNF grammar for a response format, for generations outside the chat layer."""
    from shimmy.api.json_grammar import JSON_VALUE_GBNF, SchemaError, schema_to_gbnf

    if fmt is None:
        return None
    if fmt["type"] == "json_object":
        return JSON_VALUE_GBNF
    try:
        return schema_to_gbnf(fmt["schema"])
    except SchemaError as exc:
        raise bad_request(f"invalid format schema: {exc}") from None


def no_images(images: Any, where: str) -> None:
    """shimmy reads text only: images are refused with a clear error."""
    if images is None or images == []:
        return
    raise bad_request(f"{where}.images: shimmy runs text-only models and cannot read images "
                      "yet; send text only")


def _type_error(key: str, expected: str, value: Any) -> str:
    """Go's wording for a field of the wrong JSON type."""
    return f"json: cannot unmarshal {_go_kind(value)} into Go struct field .{key} of type " \
           f"{expected}"


def _go_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
