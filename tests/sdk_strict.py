"""Validation against the official ``openai`` SDK's own types, strictly.

The SDK's models accept unknown fields (``extra="allow"``) and coerce loose types, so a
plain ``model_validate`` passes bodies OpenAI would never send. ``strictly`` parses the
JSON in pydantic's strict mode and then refuses any field the SDK's type does not
declare, anywhere in the tree, naming its path.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
import pydantic

__all__ = ("strictly", "undeclared")

T = TypeVar("T")


def undeclared(value: Any, path: str = "$") -> list[str]:
    """The paths of every field below ``value`` that its SDK type does not declare."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        found.extend(f"{path}.{name}" for name in value.__pydantic_extra__ or {})
        for name in type(value).model_fields:
            found.extend(undeclared(getattr(value, name), f"{path}.{name}"))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found.extend(undeclared(item, f"{path}[{i}]"))
    elif isinstance(value, dict):
        for key, item in value.items():
            found.extend(undeclared(item, f"{path}.{key}"))
    return found


def strictly(kind: Any, body: bytes | str | dict[str, Any] | list[Any]) -> Any:
    """Parse ``body`` (JSON text or an already decoded value) as the SDK type ``kind``;
    raise ``AssertionError`` on a mistyped or undeclared field."""
    raw = body if isinstance(body, bytes | str) else orjson.dumps(body)
    try:
        parsed = pydantic.TypeAdapter(kind).validate_json(raw, strict=True)
    except pydantic.ValidationError as exc:
        raise AssertionError(f"not a valid {kind!r}: {exc}") from None
    extra = undeclared(parsed)
    assert not extra, f"fields the SDK's {kind!r} does not declare: {extra}"
    return parsed
