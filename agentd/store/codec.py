"""How every store implementation encodes what it keeps: messages checked against
:mod:`agentd.schema`, JSON with size limits, session metadata, durations in ms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import BadRequest, NotFound, PayloadTooLarge
from ..schema import ROLES, STORED_MESSAGE_FIELDS
from .api import SessionInfo

__all__ = (
    "SESSION_DELETED",
    "decode_message",
    "dumps",
    "dumps_limited",
    "encode_message",
    "encode_stored",
    "meta_fields",
    "ms",
    "no_session",
    "session_info",
)

# The event a session's channel carries when the session is deleted.
SESSION_DELETED = b'{"kind":"deleted","data":{}}'


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise BadRequest(f"value is not JSON: {exc}", code="invalid_json") from None


def dumps_limited(value: Any, limit: int, what: str, code: str) -> bytes:
    data = dumps(value)
    if len(data) > limit:
        raise PayloadTooLarge(f"{what} is {len(data)} bytes; the limit is {limit}", code=code)
    return data


def encode_message(message: Mapping[str, Any], now: float, limit: int) -> bytes:
    """A message as stored: checked against the schema, nulls dropped (but the null
    ``content`` of a message with ``tool_calls``), ``created_at`` added, at most ``limit``
    bytes of JSON."""
    return encode_stored(message, now, limit)[1]


def encode_stored(
    message: Mapping[str, Any], now: float, limit: int
) -> tuple[dict[str, Any], bytes]:
    """:func:`encode_message`, with the message it encoded: what decoding the JSON would
    give back (before ``seq``), for a caller that answers with the stored messages. Its
    values are the caller's own objects: read them, never change them."""
    if type(message) is not dict and not isinstance(message, Mapping):  # the ABC check is slow
        raise BadRequest("a message must be an object", code="invalid_message")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:  # a list or object is unhashable
        raise BadRequest(f"message role must be one of {sorted(ROLES)}", code="invalid_message")
    if not STORED_MESSAGE_FIELDS.issuperset(message):
        unknown = set(message) - STORED_MESSAGE_FIELDS
        raise BadRequest(f"unknown message field(s): {sorted(unknown)}", code="invalid_message")
    doc = {k: v for k, v in message.items() if v is not None}
    if "tool_calls" in doc and "content" not in doc:
        doc["content"] = None  # OpenAI's shape of a reply that is only tool calls
    doc["created_at"] = now
    return doc, dumps_limited(doc, limit, "message", "message_too_large")


def decode_message(seq: int, payload: bytes) -> dict[str, Any]:
    message = orjson.loads(payload)
    message["seq"] = seq
    return message


def meta_fields(info: SessionInfo) -> dict[str, str]:
    """A new session's metadata as the store keeps it (strings, ``seq`` added by it)."""
    return {
        "created_at": repr(info.created_at),
        "tenant": info.tenant or "",
        "agent": info.agent or "",
        "metadata": dumps(info.metadata).decode(),
    }


def session_info(sid: str, meta: Mapping[str, str]) -> SessionInfo:
    return SessionInfo(
        id=sid,
        created_at=float(meta.get("created_at") or 0),
        tenant=meta.get("tenant") or None,
        agent=meta.get("agent") or None,
        metadata=orjson.loads(meta.get("metadata") or "{}"),
        last_seq=int(meta.get("seq") or 0),
    )


def no_session(sid: str) -> NotFound:
    return NotFound(f"no session {sid!r}", code="session_not_found")


def ms(seconds: float) -> int:
    """A duration in whole milliseconds, at least 1 (a TTL of 0 would mean none)."""
    return max(1, round(seconds * 1000))
