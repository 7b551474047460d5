"""OpenAI's Conversations API on the wire, over agentd's sessions: the conversation
object, its items (a session's messages), lists of them, and the request bodies. Pure:
no I/O. The shapes validate against the official SDK's ``openai.types.conversations``.

A conversation is a session: its id is the session id behind ``conv_`` (see
:func:`agentd.schema.conversation_id`), its ``metadata`` the session's. An item is a
message, its id ``msg_`` and the message's ``seq``, so it is stable, ordered, and found
in the history without a search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..client_json import loads_json
from ..errors import BadRequest
from ..schema import MAX_SEQ, conversation_id
from .responses.objects import text_part
from .responses.request import parse_input_items, parse_metadata

__all__ = (
    "ITEM_PREFIX",
    "MAX_NEW_ITEMS",
    "conversation_object",
    "deleted_object",
    "item_id",
    "item_list",
    "message_item",
    "parse_create_body",
    "parse_items_body",
    "parse_update_body",
    "seq_of_item",
)

ITEM_PREFIX = "msg_"
# Items one request may add, as OpenAI allows.
MAX_NEW_ITEMS = 20


def conversation_object(
    session_id: str, created_at: float, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """The SDK's ``Conversation`` for a session."""
    return {
        "id": conversation_id(session_id),
        "object": "conversation",
        "created_at": int(created_at),
        "metadata": dict(metadata),
    }


def deleted_object(conversation: str) -> dict[str, Any]:
    """The SDK's ``ConversationDeletedResource``."""
    return {"id": conversation, "object": "conversation.deleted", "deleted": True}


def item_id(seq: int) -> str:
    return f"{ITEM_PREFIX}{seq}"


def seq_of_item(item: str) -> int | None:
    """The seq an item id names, None if it names none."""
    digits = item[len(ITEM_PREFIX) :] if item.startswith(ITEM_PREFIX) else ""
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 16:
        return None
    seq = int(digits)
    return seq if 0 < seq <= MAX_SEQ else None


def message_item(message: Mapping[str, Any]) -> dict[str, Any]:
    """A stored message as the SDK's conversation ``Message`` item: an assistant's text
    is ``output_text``, anyone else's ``input_text``; a reply stopped by a cancel is
    ``incomplete``. A message without text (tool calls only) has an empty text part."""
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    role = message.get("role")
    part = text_part(text) if role == "assistant" else {"type": "input_text", "text": text}
    return {
        "type": "message",
        "id": item_id(message["seq"]),
        "role": role,
        "status": "incomplete" if message.get("status") == "cancelled" else "completed",
        "content": [part],
    }


def item_list(items: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A list of items in OpenAI's list shape (``ConversationItemList``,
    ``ResponseItemList``); ``first_id`` and ``last_id`` are "" when it is empty."""
    return {
        "object": "list",
        "data": list(items),
        "first_id": items[0]["id"] if items else "",
        "last_id": items[-1]["id"] if items else "",
        "has_more": has_more,
    }


def _body(raw: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    body = loads_json(raw) if raw else {}
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_request")
    for key in body:
        if key not in allowed:
            name = key if len(key) <= 64 else key[:64] + "..."
            raise BadRequest(
                f"unknown parameter {name!r}", code="unknown_parameter", detail={"param": name}
            )
    return body


def _items(value: Any, required: bool) -> list[dict[str, Any]]:
    if value is None:
        if required:
            raise BadRequest(
                "items is required", code="missing_required_parameter", detail={"param": "items"}
            )
        return []
    if isinstance(value, list) and len(value) > MAX_NEW_ITEMS:
        raise BadRequest(
            f"items holds at most {MAX_NEW_ITEMS} items",
            code="invalid_value",
            detail={"param": "items"},
        )
    return parse_input_items(value, "items")


def parse_create_body(raw: bytes) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``POST /v1/conversations``: (the first items as chat messages, metadata)."""
    body = _body(raw, frozenset({"items", "metadata"}))
    return _items(body.get("items"), False), parse_metadata(body.get("metadata"))


def parse_update_body(raw: bytes) -> dict[str, str]:
    """``POST /v1/conversations/{id}``: the new metadata (replacing the old)."""
    body = _body(raw, frozenset({"metadata"}))
    if "metadata" not in body:
        raise BadRequest(
            "metadata is required", code="missing_required_parameter", detail={"param": "metadata"}
        )
    return parse_metadata(body["metadata"])


def parse_items_body(raw: bytes) -> list[dict[str, Any]]:
    """``POST /v1/conversations/{id}/items``: the items as chat messages."""
    items = _items(_body(raw, frozenset({"items"})).get("items"), True)
    if not items:
        raise BadRequest(
            "items must hold at least one item", code="invalid_value", detail={"param": "items"}
        )
    return items
