"""The streaming events of OpenAI's Responses API, as agentd sends them: built by
:class:`ResponseEvents` and framed by :func:`event_frame`. They validate against the
official SDK's models (``openai.types.responses.ResponseStreamEvent``). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import orjson

from .. import sse
from .items import tool_error
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
# The error of a call an earlier attempt left running that the attempt going on with its
# stream did not make again (a model that asked for other calls in that step).
ABANDONED = tool_error(
    "the worker running this call stopped before its result came, and the response went on "
    "without it: the model, asked for this step again, did not make this call",
    "cancelled",
)


class ResponseEvents:
    """Builds a response's streaming events, numbering them from ``first_seq``.

    The events, in order: :meth:`created` (``response.created``, and
    ``response.queued`` while queued), :meth:`started` (``response.in_progress``,
    ``response.output_item.added``, ``response.content_part.added``) — together
    :meth:`opening` — then :meth:`delta` per piece of text, then :meth:`closing`.
    ``item_open`` says whether the output message was added (:meth:`resume` sets it
    for a builder that goes on with a stream): only then does :meth:`closing` close it.

    With ``tools`` (the turn may run server-side tools), the items of those tools come
    first: :meth:`started` adds no message, :meth:`text` adds it with its first text
    (or :meth:`closing` does, when there is text to close it with), after the items
    added so far; :meth:`tool_item`, :meth:`call_started` and :meth:`call_ended` add
    and end tool items. ``items`` and ``message_at`` are the output so far, as
    :class:`ResponseView` holds it.

    A builder that goes on with a stream an earlier attempt wrote (:meth:`resume`)
    builds no event that stream holds: told a tool item again, it builds only those of
    its events the stream lacks, and none for an item the stream ended.
    """

    __slots__ = (
        "_calls", "_item_id", "_places", "_stale", "_texts", "_tools", "_view", "_written",
        "item_open", "items", "message_at", "next_seq",
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
        self._places: dict[str, int] = {}  # the item id of every tool item -> its place
        # (type, item id) of the events about items an earlier attempt's stream holds.
        self._written: set[tuple[str, str]] = set()
        # The calls an earlier attempt left in progress, until this one makes them again.
        self._stale: set[str] = set()

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.next_seq, **fields}
        self.next_seq += 1
        return event

    def _unwritten(self, kind: str, about: str, /, **fields: Any) -> list[dict[str, Any]]:
        """The event about the item ``about`` (its id), unless the stream holds it
        already (then none, and no number is taken)."""
        if (kind, about) in self._written:
            return []
        return [self._event(kind, **fields)]

    def _place(self, item: dict[str, Any]) -> int:
        """The place of a tool item in ``items``: its own when it has one, else the
        next (the item added there)."""
        place = self._places.get(item["id"])
        if place is None:
            place = self._places[item["id"]] = len(self.items)
            self.items.append(item)
        return place

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
        item_id = item["id"]
        if ("response.output_item.done", item_id) in self._written:
            return []  # the stream has it whole: kept as the stream told it
        place = self._place(item)
        self.items[place] = item
        index = self._output_index(place)
        ids = {"item_id": item_id, "output_index": index}
        events = []
        if item["type"] == "mcp_list_tools":
            ended = "failed" if item.get("error") else "completed"
            events += [
                *self._unwritten("response.output_item.added", item_id, output_index=index,
                                 item={**item, "tools": []}),
                *self._unwritten("response.mcp_list_tools.in_progress", item_id, **ids),
                *self._unwritten(f"response.mcp_list_tools.{ended}", item_id, **ids),
            ]  # fmt: skip
        else:
            events += self._unwritten("response.output_item.added", item_id, output_index=index,
                                      item=item)  # fmt: skip
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def call_started(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """An ``mcp_call`` begins (``item`` in progress, with its arguments): added, in
        progress, and its arguments (whole, in one delta). A call the stream holds goes
        on: nothing when it ended there, else only the events it lacks."""
        item_id = item["id"]
        if item_id in self._places and item_id not in self._calls:
            return []  # ended in the stream already
        place = self._place(item)
        self.items[place] = item
        self._calls[item_id] = place
        self._stale.discard(item_id)
        index = self._output_index(place)
        ids = {"item_id": item_id, "output_index": index}
        arguments = item["arguments"]
        return [
            *self._unwritten("response.output_item.added", item_id, output_index=index,
                             item={**item, "arguments": ""}),
            *self._unwritten("response.mcp_call.in_progress", item_id, **ids),
            *self._unwritten("response.mcp_call_arguments.delta", item_id, delta=arguments,
                             **ids),
            *self._unwritten("response.mcp_call_arguments.done", item_id, arguments=arguments,
                             **ids),
        ]  # fmt: skip

    def call_ended(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """An ``mcp_call`` ended (``item`` completed or failed); nothing for a call
        that was not started or has ended already."""
        item_id = item["id"]
        place = self._calls.pop(item_id, None)
        if place is None:
            return []
        self._stale.discard(item_id)
        self.items[place] = item
        index = self._output_index(place)
        ended = "completed" if item["status"] == "completed" else "failed"
        return [
            *self._unwritten(f"response.mcp_call.{ended}", item_id, item_id=item_id,
                             output_index=index),
            self._event("response.output_item.done", output_index=index, item=item),
        ]  # fmt: skip

    def open_call(self, item_id: str) -> dict[str, Any] | None:
        """The ``mcp_call`` item ``item_id`` while it is in progress (else None)."""
        place = self._calls.get(item_id)
        return None if place is None else self.items[place]

    def calls_starting(self, item_ids: Collection[str]) -> list[dict[str, Any]]:
        """A step of the loop starts the calls ``item_ids``: the calls an earlier
        attempt left in progress that are not among them end, failed (:data:`ABANDONED`).
        Only the first step after :meth:`resume` can go on with such a call."""
        events = []
        for item_id in sorted(self._stale.difference(item_ids), key=self._places.__getitem__):
            stale = self.items[self._places[item_id]]
            events += self.call_ended({**stale, "status": "failed", "error": ABANDONED})
        self._stale.clear()
        return events

    def resume(self, written: Iterable[Mapping[str, Any]]) -> None:
        """Go on with the stream an earlier attempt wrote, ``written`` being its events
        since its ``response.in_progress``: the output items it added keep their
        places (an item's last form in the stream, a call's with its arguments), the
        message stays open if it was added, and its deltas are the text so far. A call
        it added but did not end goes on when this attempt starts it again (the same
        item id); else :meth:`calls_starting` or :meth:`closing` ends it failed."""
        for event in written:
            kind, item = event["type"], event.get("item")
            item_id = event.get("item_id") or (item or {}).get("id")
            if item_id is not None:
                self._written.add((kind, str(item_id)))
            if kind == "response.output_text.delta":
                self._texts.append(event["delta"])
            elif kind == "response.mcp_call_arguments.done" and item_id in self._places:
                place = self._places[item_id]
                self.items[place] = {**self.items[place], "arguments": event["arguments"]}
            elif item is None or kind not in ("response.output_item.added",
                                              "response.output_item.done"):  # fmt: skip
                continue
            elif item["type"] == "message":
                if kind == "response.output_item.added":
                    self.message_at = len(self.items)  # after the items added before it
                self.item_open = kind == "response.output_item.added"
            else:
                place = self._place(item)
                self.items[place] = item
                if item["type"] == "mcp_call" and kind == "response.output_item.added":
                    self._calls[item["id"]] = place
                else:
                    self._calls.pop(item["id"], None)
        self._stale = set(self._calls)

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
        events = self.calls_starting(())  # calls an earlier attempt left, not made again
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
