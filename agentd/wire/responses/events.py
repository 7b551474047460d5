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

    With ``tools`` (the turn may run server-side tools), the items of those tools come
    first: :meth:`started` adds no message, :meth:`text` adds it with its first text
    (or :meth:`closing` does, when there is text to close it with), after the items
    added so far; :meth:`tool_item`, :meth:`call_started` and :meth:`call_ended` add
    and end tool items. ``items`` and ``message_at`` are the output so far, as
    :class:`ResponseView` holds it.
    """

    __slots__ = (
        "_calls", "_item_id", "_texts", "_tools", "_view", "item_open", "items", "message_at",
        "next_seq",
    )  # fmt: skip

    def __init__(self, view: ResponseView, first_seq: int = 0, tools: bool = False) -> None:
        self._view = view
        self._item_id = message_item_id(view.id)
        self._texts: list[str] = []  # the deltas so far, for a view without output_text
        self.next_seq = first_seq  # the number the next event gets
        self.item_open = False
        self._tools = tools
        self.items: list[dict[str, Any]] = []  # tool items, in output order
        self.message_at: int | None = None if tools else 0
        self._calls: dict[str, int] = {}  # the item id of a call in progress -> its place

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.next_seq, **fields}
        self.next_seq += 1
        return event

    def _content(self, kind: str, **fields: Any) -> dict[str, Any]:
        """An event about the output message's one text part."""
        return self._event(kind, item_id=self._item_id, output_index=self.message_at or 0,
                           content_index=0, **fields)  # fmt: skip

    def _output_index(self, place: int) -> int:
        """The output index of the tool item at ``place`` in ``items``."""
        at = self.message_at
        return place + 1 if at is not None and at <= place else place

    def _open_message(self, status: str) -> list[dict[str, Any]]:
        self.item_open = True
        self.message_at = len(self.items)
        return [
            self._event(
                "response.output_item.added",
                output_index=self.message_at,
                item=message_item(self._view.id, "", status),
            ),
            self._content("response.content_part.added", part=text_part("")),
        ]

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
        events = [self._event("response.in_progress", response=response_object(view))]
        if not self._tools:
            events += self._open_message("in_progress")
        return events

    def opening(self) -> list[dict[str, Any]]:
        """:meth:`created` then :meth:`started`: every event before the first delta."""
        return self.created() + self.started()

    def delta(self, text: str) -> dict[str, Any]:
        """``response.output_text.delta`` of the output message."""
        if not self.item_open:
            raise RuntimeError("delta() before started(): the output message is not open")
        self._texts.append(text)
        return self._content("response.output_text.delta", delta=text, logprobs=[])

    def text(self, text: str) -> list[dict[str, Any]]:
        """A piece of the message's text: :meth:`delta`, after the message is added if
        it is not yet (a turn with tools)."""
        opened = [] if self.item_open else self._open_message("in_progress")
        return [*opened, self.delta(text)]

    def tool_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """An ``mcp_list_tools`` item, whole (``response.mcp_list_tools.failed`` when it
        has an ``error``), or an ``mcp_approval_request``."""
        index = self._output_index(len(self.items))
        self.items.append(item)
        events = []
        if item["type"] == "mcp_list_tools":
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "tools": []},
                )
            )
            ids = {"item_id": item["id"], "output_index": index}
            ended = "failed" if item.get("error") else "completed"
            events += [
                self._event("response.mcp_list_tools.in_progress", **ids),
                self._event(f"response.mcp_list_tools.{ended}", **ids),
            ]
        else:
            events.append(self._event("response.output_item.added", output_index=index, item=item))
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def call_started(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """An ``mcp_call`` begins (``item`` in progress, with its arguments): added, in
        progress, and its arguments (whole, in one delta)."""
        place = len(self.items)
        index = self._output_index(place)
        self.items.append(item)
        self._calls[item["id"]] = place
        ids = {"item_id": item["id"], "output_index": index}
        arguments = item["arguments"]
        return [
            self._event("response.output_item.added", output_index=index,
                        item={**item, "arguments": ""}),
            self._event("response.mcp_call.in_progress", **ids),
            self._event("response.mcp_call_arguments.delta", delta=arguments, **ids),
            self._event("response.mcp_call_arguments.done", arguments=arguments, **ids),
        ]  # fmt: skip

    def call_ended(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """An ``mcp_call`` ended (``item`` completed or failed); nothing for a call
        that was not started or has ended already."""
        place = self._calls.pop(item["id"], None)
        if place is None:
            return []
        self.items[place] = item
        index = self._output_index(place)
        ended = "completed" if item["status"] == "completed" else "failed"
        return [
            self._event(f"response.mcp_call.{ended}", item_id=item["id"], output_index=index),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def function_call(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """A ``function_call`` item (the client's tool to run), whole: added with no
        arguments, its arguments in one delta, done."""
        index = self._output_index(len(self.items))
        self.items.append(item)
        ids = {"item_id": item["id"], "output_index": index}
        arguments = item["arguments"]
        return [
            self._event("response.output_item.added", output_index=index,
                        item={**item, "arguments": "", "status": "in_progress"}),
            self._event("response.function_call_arguments.delta", delta=arguments, **ids),
            self._event("response.function_call_arguments.done", arguments=arguments, **ids),
            self._event("response.output_item.done", output_index=index, item=item),
        ]  # fmt: skip

    def finished(self, view: ResponseView) -> ResponseView:
        """``view`` with the tool items so far, when it has none of its own (a response
        that ended without its turn's result: failed, or stopped where it was)."""
        if not self._tools or view.items is not None:
            return view
        return dataclasses.replace(view, items=list(self.items), message_at=self.message_at)

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
        for item_id in list(self._calls):  # calls the turn stopped without an end
            place = self._calls[item_id]
            events += self.call_ended({**self.items[place], "status": "incomplete"})
        if self._tools and not self.item_open and view.output_text is not None:
            events += self._open_message("in_progress")
        view = self.finished(view)
        if self.item_open:
            text = view.output_text if view.output_text is not None else "".join(self._texts)
            view = dataclasses.replace(view, output_text=text)
            events += [
                self._content("response.output_text.done", text=text, logprobs=[]),
                self._content("response.content_part.done", part=text_part(text)),
                self._event(
                    "response.output_item.done",
                    output_index=self.message_at or 0,
                    item=message_item(view.id, text, item_status(view.status)),
                ),
            ]
            self.item_open = False
        events.append(self._event(kind, response=response_object(view)))
        return events


def event_frame(event: dict[str, Any]) -> bytes:
    """One event as OpenAI frames them: ``event: <type>``, then the JSON."""
    return sse.frame(orjson.dumps(event), event["type"])
