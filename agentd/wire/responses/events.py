"""The streaming events of OpenAI's Responses API, as agentd sends them: built by
:class:`ResponseEvents` and framed by :func:`event_frame`. They validate against the
official SDK's models (``openai.types.responses.ResponseStreamEvent``). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from .. import sse
from .objects import (
    ResponseView,
    item_status,
    message_item,
    message_item_id,
    response_object,
    text_part,
)

__all__ = ("TERMINAL_EVENTS", "ResponseEvents", "event_frame")

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
                item=message_item(view.id, "", "in_progress"),
            ),
            self._content("response.content_part.added", part=text_part("")),
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
                self._content("response.content_part.done", part=text_part(text)),
                self._event(
                    "response.output_item.done",
                    output_index=0,
                    item=message_item(view.id, text, item_status(view.status)),
                ),
            ]
            self.item_open = False
        events.append(self._event(kind, response=response_object(view)))
        return events


def event_frame(event: dict[str, Any]) -> bytes:
    """One event as OpenAI frames them: ``event: <type>``, then the JSON."""
    return sse.frame(orjson.dumps(event), event["type"])
