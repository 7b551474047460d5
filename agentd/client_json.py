"""Reading JSON from clients (HTTP bodies, WebSocket frames, queued requests) with the
limits every entry point shares."""

from __future__ import annotations

from typing import Any

import orjson

from .errors import BadRequest
from .fastpath import MAX_DEPTH

__all__ = ("loads_json",)


def loads_json(data: bytes | str, what: str = "the body") -> Any:
    """Parse client JSON: 400 ``invalid_json`` if it is not JSON or nests deeper than
    ``MAX_DEPTH`` (the limit, and why, are with the chat parser in the fast path)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}", code="invalid_json") from None
    try:
        orjson.dumps([[[value]]])  # a depth check at C speed, room left for the envelope
    except orjson.JSONEncodeError:
        raise BadRequest(
            f"{what} nests deeper than {MAX_DEPTH} levels", code="invalid_json"
        ) from None
    return value
