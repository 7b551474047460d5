"""The response object of OpenAI's Responses API, as agentd speaks it, and its ids.
Pure: no I/O, no clock, no store.

``response_object`` renders a :class:`ResponseView` as OpenAI's response object; it
validates against the official SDK's model (``openai.types.responses.Response``). The
streaming events are in :mod:`.events`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import response_error
from .functions import choice_shown, input_call_items
from .functions import tools_shown as functions_shown
from .mcp import tools_shown
from .request import CreateRequest

__all__ = (
    "ResponseView",
    "input_items",
    "item_status",
    "message_item",
    "message_item_id",
    "new_response_id",
    "response_object",
    "text_part",
)


def new_response_id() -> str:
    """A new response id: ``resp_`` and 48 random hex digits, like OpenAI's."""
    return "resp_" + secrets.token_hex(24)


def message_item_id(response_id: str) -> str:
    """The id of a response's one output message, derived from the response id so that
    every attempt on every instance renders the same one."""
    digest = hashlib.sha256(b"agentd.message_item\x00" + response_id.encode()).hexdigest()
    return "msg_" + digest[:48]


# -- the response object ----------------------------------------------------------------


@dataclass(slots=True)
class ResponseView:
    """What :func:`response_object` renders: a response's state at one moment."""

    id: str
    created_at: float
    status: str  # queued | in_progress | completed | failed | cancelled | incomplete
    request: CreateRequest
    output_text: str | None = None  # None: no output item yet
    usage: dict[str, Any] | None = None  # chat-style {prompt_tokens, completion_tokens, ...}
    error: dict[str, Any] | None = None  # {"code", "message"}, see error_dict
    incomplete_reason: str | None = None  # "max_output_tokens" (or "length"), ...
    session_id: str | None = None  # the session the turn was stored in
    completed_at: float | None = None
    # The output items of server-side tools (mcp_list_tools, mcp_call, ...) in order,
    # and the message's place among them (None: after them all).
    items: list[dict[str, Any]] | None = None
    message_at: int | None = None


# Chat finish reasons and Responses reasons, as the SDK's IncompleteDetails.reason.
_INCOMPLETE_REASONS = {
    "length": "max_output_tokens",
    "max_output_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "content_filter": "content_filter",
}
_ITEM_STATUS = {"completed": "completed", "queued": "in_progress", "in_progress": "in_progress"}
_STATUSES = frozenset({"queued", "in_progress", "completed", "failed", "cancelled", "incomplete"})


def item_status(status: str) -> str:
    """The output message's status for a response's ``status``."""
    return _ITEM_STATUS.get(status, "incomplete")  # failed, cancelled, incomplete


def message_item(response_id: str, text: str, status: str) -> dict[str, Any]:
    """The response's one output item: the assistant message holding ``text``."""
    return {
        "type": "message",
        "id": message_item_id(response_id),
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    }


def input_items(response_id: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The response's input as OpenAI lists it (``GET /v1/responses/{id}/input_items``),
    oldest first: one item per input message, its id derived from the response id and
    its place (so every instance renders the same). An assistant message is an output
    message item, the others input message items."""
    items = []
    for i, message in enumerate(messages):
        digest = hashlib.sha256(b"agentd.input_item\x00%s\x00%d" % (response_id.encode(), i))
        item_id = "msg_" + digest.hexdigest()[:48]
        text = message.get("content") or ""
        if message.get("role") == "tool" or message.get("tool_calls"):
            items += input_call_items(item_id, message)  # function calls and outputs
        elif message.get("role") == "assistant":
            items.append(
                {
                    "type": "message",
                    "id": item_id,
                    "status": "completed",
                    "role": "assistant",
                    "content": [text_part(text)],
                }
            )
        else:
            items.append(
                {
                    "type": "message",
                    "id": item_id,
                    "status": "completed",
                    "role": message.get("role"),
                    "content": [{"type": "input_text", "text": text}],
                }
            )
    return items


def text_part(text: str) -> dict[str, Any]:
    """The output message's one content part."""
    return {"type": "output_text", "text": text, "annotations": []}


def _tokens(usage: Mapping[str, Any], key: str, detail: str | None = None) -> int:
    value = usage.get(key)
    if detail is not None:
        value = value.get(detail) if isinstance(value, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    prompt, completion = _tokens(usage, "prompt_tokens"), _tokens(usage, "completion_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _tokens(usage, "prompt_tokens_details", "cached_tokens"),
            "cache_write_tokens": 0,  # required by the SDK; chat backends do not report it
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _tokens(usage, "completion_tokens_details", "reasoning_tokens"),
        },
        "total_tokens": _tokens(usage, "total_tokens") or prompt + completion,
    }


def response_object(view: ResponseView) -> dict[str, Any]:
    """OpenAI's response object for ``view``, plus agentd's ``session_id``.

    ``output`` holds the items of server-side tools (``view.items``) and the one
    assistant message once ``view.output_text`` is not None (at ``view.message_at``,
    else after them); its status follows the response's (completed; in_progress
    while queued or running; incomplete otherwise). ``error.code`` is one of the
    SDK's codes, agentd's own code is ``error.agentd_code``.
    """
    if view.status not in _STATUSES:
        raise ValueError(f"unknown response status {view.status!r}")
    request, params = view.request, view.request.params
    output = list(view.items or ())
    if view.output_text is not None:
        message = message_item(view.id, view.output_text, item_status(view.status))
        output.insert(len(output) if view.message_at is None else view.message_at, message)
    incomplete = None
    if view.status == "incomplete":
        incomplete = {"reason": _INCOMPLETE_REASONS.get(view.incomplete_reason or "")}
    # OpenAI sets completed_at only on completed responses.
    completed_at = view.completed_at if view.status == "completed" else None
    return {
        "id": view.id,
        "object": "response",
        "created_at": int(view.created_at),
        "status": view.status,
        "completed_at": int(completed_at) if completed_at is not None else None,
        "background": request.background,
        "error": response_error(view.error),
        "incomplete_details": incomplete,
        "instructions": request.instructions,
        "max_output_tokens": params.get("max_tokens"),
        "metadata": request.metadata,
        "model": request.agent,
        "output": output,
        "parallel_tool_calls": params.get("parallel_tool_calls", True),
        "previous_response_id": request.previous_response_id,
        "reasoning": None,
        "temperature": params.get("temperature"),
        "text": {"format": {"type": "text"}},
        "tool_choice": choice_shown(params.get("tool_choice")),
        "tools": [*tools_shown(request.mcp_tools), *functions_shown(params)],
        "top_p": params.get("top_p"),
        "truncation": "disabled",
        "usage": _usage(view.usage),
        "user": params.get("user"),
        # Set when the request named a conversation, as OpenAI's.
        "conversation": None if request.conversation is None else {"id": request.conversation},
        "session_id": view.session_id if view.session_id is not None else request.session_id,
    }
