"""How a configuration field is declared (:func:`opt`: its default and constraints), and
the value checks several sections share."""

from __future__ import annotations

import typing
from dataclasses import field
from typing import Any

# A value check: an error message, or None when the value is good.
Check = typing.Callable[[Any], str | None]


def opt(
    default: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    auto: Any = None,
    check: Check | None = None,
) -> Any:
    """Declare a config field: its default and the constraints :func:`load` enforces.

    ``auto`` is a zero-argument callable: the string ``"auto"`` is then accepted and
    replaced by its result. ``check`` returns an error message or ``None``.
    """
    meta = {"min": min, "max": max, "choices": choices, "auto": auto, "check": check}
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata=meta)


def check_http_url(value: str) -> str | None:
    if not value.startswith(("http://", "https://")):
        return f"must start with http:// or https://, got {value!r}"
    return None


def optional(check: Check) -> Check:
    """``check`` for a setting that may also be left empty (``""``: not set)."""

    def check_if_set(value: str) -> str | None:
        return check(value) if value else None

    return check_if_set


check_webhook_url = optional(check_http_url)


def one_of(choices: tuple[str, ...]) -> Check:
    """A check that the value is one of ``choices`` (for the items of an array, which
    :func:`opt`'s ``choices`` does not cover)."""

    def check_choice(value: str) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(choices)}; got {value!r}"
        return None

    return check_choice


def check_name(value: str) -> str | None:
    if not value or not all(c.isalnum() or c in "._-" for c in value) or len(value) > 64:
        return f"must be 1-64 characters of letters, digits, '.', '_' or '-', got {value!r}"
    return None
