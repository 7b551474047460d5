"""The message schema and the id rules, written once.

The chat parser (``fastpath``), the store, and the Responses request all check messages
and ids against these tables, so a rule changes in one place.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from .errors import BadRequest, invalid_type, param_error

__all__ = (
    "CONVERSATION_PREFIX",
    "INPUT_ROLES",
    "MAX_METADATA",
    "MAX_METADATA_KEY",
    "MAX_METADATA_VALUE",
    "MAX_SEQ",
    "MESSAGE_FIELDS",
    "NAME_RE",
    "ROLES",
    "SESSION_ID_RE",
    "STORED_MESSAGE_FIELDS",
    "check_metadata",
    "conversation_id",
    "new_session_id",
    "session_of_conversation",
    "validate_name",
    "validate_session_id",
)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# The roles of a Responses API input message, in the order its errors list them: ROLES
# less ``tool`` (a tool's output is an item of its own type there).
INPUT_ROLES = ("user", "assistant", "system", "developer")
# Fields a client may send on a message: every field of OpenAI's chat message types (an
# assistant message sent back as the SDK returned it carries refusal, audio and
# function_call, often null).
MESSAGE_FIELDS = frozenset(
    {"role", "content", "name", "tool_call_id", "tool_calls", "refusal", "audio", "function_call"}
)
# Fields a stored message may carry, besides the ``seq`` and ``created_at`` the store adds:
# ``status`` marks a cancelled reply, ``turn`` is the id of the turn that added it,
# ``metadata`` the chat request's metadata (on the stored reply).
STORED_MESSAGE_FIELDS = MESSAGE_FIELDS | {"status", "turn", "metadata"}

# A session id travels in URLs and Redis keys: a safe charset, never a brace (braces
# would change the key's hash tag), bounded length.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Shared-state namespaces and keys, agent names in paths: segments of the same charset.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")

# The largest seq accepted in a range: Redis's Lua numbers are doubles, exact to 2**53.
MAX_SEQ = 2**53 - 1


# A session seen through OpenAI's Conversations API: its id with this prefix. Every
# session id is a valid tail, so the mapping is one-to-one both ways.
CONVERSATION_PREFIX = "conv_"


def conversation_id(session_id: str) -> str:
    """The conversation id of a session."""
    return CONVERSATION_PREFIX + session_id


def session_of_conversation(conversation: str) -> str | None:
    """The session id behind a conversation id, None if it is not one."""
    if not isinstance(conversation, str) or not conversation.startswith(CONVERSATION_PREFIX):
        return None
    sid = conversation[len(CONVERSATION_PREFIX) :]
    return sid if SESSION_ID_RE.fullmatch(sid) else None


def new_session_id() -> str:
    """A server-chosen session id: ``s_`` and 128 random bits, URL-safe."""
    return "s_" + secrets.token_urlsafe(16)


def validate_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not SESSION_ID_RE.fullmatch(session_id):
        raise BadRequest(
            "session id must be 1-128 characters of A-Z a-z 0-9 . _ : - "
            "(starting with a letter or digit)",
            code="invalid_session_id",
        )
    return session_id


def validate_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadRequest(
            f"{kind} must be 1-200 characters of A-Z a-z 0-9 . _ : - "
            "(starting with a letter or digit)",
            code=f"invalid_{kind}",
        )
    return name


# OpenAI's limits on metadata: 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


def check_metadata(value: Any) -> dict[str, str] | None:
    """``value`` if it is null or valid OpenAI metadata (string values, OpenAI's limits);
    else a 400 naming ``metadata`` (``invalid_type`` or ``invalid_value``)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_type("metadata", (dict,))
    if len(value) > MAX_METADATA:
        raise param_error(
            f"metadata holds at most {MAX_METADATA} pairs", "invalid_value", "metadata"
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise param_error(
                f"metadata keys have at most {MAX_METADATA_KEY} characters",
                "invalid_value",
                "metadata",
            )
        if not isinstance(item, str):
            raise param_error("metadata values must be strings", "invalid_type", f"metadata.{key}")
        if len(item) > MAX_METADATA_VALUE:
            raise param_error(
                f"metadata values have at most {MAX_METADATA_VALUE} characters",
                "invalid_value",
                f"metadata.{key}",
            )
    return value
