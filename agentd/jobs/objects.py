"""The response side of OpenAI's Responses API, as agentd speaks it: the response
object and its streaming events. Pure: no I/O, no clock, no store.

``response_object`` renders a :class:`ResponseView` as OpenAI's response object, and
:class:`ResponseEvents` builds the server-sent events of a streamed response; both
validate against the official SDK's models (``openai.types.responses``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import AgentdError
from .request import CreateRequest

__all__ = (
    "TERMINAL_EVENTS",
    "ResponseEvents",
    "ResponseView",
    "error_dict",
    "message_item_id",
    "new_response_id",
    "response_object",
    "sse_frame",
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


def error_dict(exc: AgentdError) -> dict[str, Any]:
    """An agentd error as ``ResponseView.error``."""
    return {"code": exc.code, "message": exc.message, "type": exc.type}


# The SDK's ResponseError.code is a closed set: agentd's codes are rendered as the
# nearest of them, and kept whole in the extension field ``agentd_code``.
_ERROR_CODES = {"rate_limited": "rate_limit_exceeded", "rate_limit_exceeded": "rate_limit_exceeded"}
# Chat finish reasons and Responses reasons, as the SDK's IncompleteDetails.reason.
_INCOMPLETE_REASONS = {
    "length": "max_output_tokens",
    "max_output_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "content_filter": "content_filter",
}
_ITEM_STATUS = {"completed": "completed", "queued": "in_progress", "in_progress": "in_progress"}
_STATUSES = frozenset({"queued", "in_progress", "completed", "failed", "cancelled", "incomplete"})


def _item_status(status: str) -> str:
    return _ITEM_STATUS.get(status, "incomplete")  # failed, cancelled, incomplete


def _message_item(response_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": message_item_id(response_id),
        "status": status,
        "role": "assistant",
        "content": [_text_part(text)],
    }


def _text_part(text: str) -> dict[str, Any]:
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


def _error(error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if error is None:
        return None
    code = str(error.get("code") or "server_error")
    return {
        "code": _ERROR_CODES.get(code, "server_error"),
        "message": str(error.get("message") or code),
        "param": error.get("param"),
        "type": error.get("type"),
        "agentd_code": code,
    }


def response_object(view: ResponseView) -> dict[str, Any]:
    """OpenAI's response object for ``view``, plus agentd's ``session_id``.

    ``output`` holds the one assistant message once ``view.output_text`` is not None;
    its status follows the response's (completed; in_progress while queued or running;
    incomplete otherwise). ``error.code`` is one of the SDK's codes, agentd's own code
    is ``error.agentd_code``.
    """
    if view.status not in _STATUSES:
        raise ValueError(f"unknown response status {view.status!r}")
    request, params = view.request, view.request.params
    output = []
    if view.output_text is not None:
        output.append(_message_item(view.id, view.output_text, _item_status(view.status)))
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
        "error": _error(view.error),
        "incomplete_details": incomplete,
        "instructions": request.instructions,
        "max_output_tokens": params.get("max_tokens"),
        "metadata": request.metadata,
        "model": request.agent,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": request.previous_response_id,
        "reasoning": None,
        "store": request.store,
        "temperature": params.get("temperature"),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": params.get("top_p"),
        "truncation": "disabled",
        "usage": _usage(view.usage),
        "user": params.get("user"),
        "session_id": view.session_id if view.session_id is not None else request.session_id,
    }


# -- streaming events -------------------------------------------------------------------

_TERMINAL_EVENT_OF = {
    "completed": "response.completed",
    "failed": "response.failed",
    "incomplete": "response.incomplete",
    # OpenAI's stream has no cancelled event: a cancelled response ends with
    # response.incomplete (output stopped early, no error) whose response says
    # "status": "cancelled".
    "cancelled": "response.incomplete",
}
# The event types that end a stream.
TERMINAL_EVENTS = frozenset(_TERMINAL_EVENT_OF.values())


class ResponseEvents:
    """Builds a response's streaming events, numbering them from ``first_seq``.

    The events, in order: :meth:`created` (``response.created``, and
    ``response.queued`` while queued), :meth:`started` (``response.in_progress``,
    ``response.output_item.added``, ``response.content_part.added``) — together
    :meth:`opening` — then :meth:`delta` per piece of text, then :meth:`closing`.
    ``item_open`` says whether the output message was added (set it when resuming a
    stream on a new builder): only then does :meth:`closing` close it.
    """

    __slots__ = ("_item_id", "_texts", "_view", "item_open", "next_seq")

    def __init__(self, view: ResponseView, first_seq: int = 0) -> None:
        self._view = view
        self._item_id = message_item_id(view.id)
        self._texts: list[str] = []  # the deltas so far, for a view without output_text
        self.next_seq = first_seq  # the number the next event gets
        self.item_open = False

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.next_seq, **fields}
        self.next_seq += 1
        return event

    def _content(self, kind: str, **fields: Any) -> dict[str, Any]:
        """An event about the output message's one text part."""
        return self._event(kind, item_id=self._item_id, output_index=0, content_index=0, **fields)

    def created(self) -> list[dict[str, Any]]:
        """``response.created`` with the response as the view says (queued or in
        progress), and ``response.queued`` when it is queued."""
        view = dataclasses.replace(self._view, output_text=None)
        events = [self._event("response.created", response=response_object(view))]
        if view.status == "queued":
            events.append(self._event("response.queued", response=response_object(view)))
        return events

    def started(self) -> list[dict[str, Any]]:
        """``response.in_progress``, then the empty output message and text part."""
        view = dataclasses.replace(self._view, status="in_progress", output_text=None)
        self.item_open = True
        return [
            self._event("response.in_progress", response=response_object(view)),
            self._event(
                "response.output_item.added",
                output_index=0,
                item=_message_item(view.id, "", "in_progress"),
            ),
            self._content("response.content_part.added", part=_text_part("")),
        ]

    def opening(self) -> list[dict[str, Any]]:
        """:meth:`created` then :meth:`started`: every event before the first delta."""
        return self.created() + self.started()

    def delta(self, text: str) -> dict[str, Any]:
        """``response.output_text.delta`` of the output message."""
        if not self.item_open:
            raise RuntimeError("delta() before started(): the output message is not open")
        self._texts.append(text)
        return self._content("response.output_text.delta", delta=text, logprobs=[])

    def closing(self, view: ResponseView) -> list[dict[str, Any]]:
        """The events that end the stream, ``view`` being the response's final state.

        When the message is open: ``response.output_text.done``,
        ``response.content_part.done`` and ``response.output_item.done`` with the final
        text (``view.output_text``, else the deltas joined). Then the terminal event by
        status: ``response.completed``, ``response.failed``, or
        ``response.incomplete`` (also for ``cancelled``, OpenAI having no such event).
        """
        kind = _TERMINAL_EVENT_OF.get(view.status)
        if kind is None:
            raise ValueError(f"closing() needs a final status, not {view.status!r}")
        events = []
        if self.item_open:
            text = view.output_text if view.output_text is not None else "".join(self._texts)
            view = dataclasses.replace(view, output_text=text)
            events += [
                self._content("response.output_text.done", text=text, logprobs=[]),
                self._content("response.content_part.done", part=_text_part(text)),
                self._event(
                    "response.output_item.done",
                    output_index=0,
                    item=_message_item(view.id, text, _item_status(view.status)),
                ),
            ]
            self.item_open = False
        events.append(self._event(kind, response=response_object(view)))
        return events


def sse_frame(event: dict[str, Any]) -> bytes:
    """One server-sent event as OpenAI frames them: ``event: <type>`` then the JSON."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
