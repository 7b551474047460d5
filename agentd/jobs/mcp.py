"""The ``mcp`` tools of a Responses request at run time: which tool servers they name
(checked when the response is created, resolved to the worker's connections when it
runs), and what a turn with server-side tools shows of them: its output items, as
streaming events (:class:`TurnItems`).

A tool names a configured server (``[[mcp_servers]]``) by ``server_label``, or a server
by ``server_url``, which ``[tools] allowed_server_urls`` must allow. Refusals are 400s
naming the field: ``unknown_server_label``, ``server_url_not_allowed``,
``server_label_conflict`` (a ``server_url`` labelled like a configured server), and
``mcp_unavailable`` (no tool layer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..agent import Listener, RecordedStep, ToolResult, Tools, ToolServer, ToolSet
from ..config import AgentConfig
from ..errors import param_error
from ..wire.responses import ResponseEvents
from ..wire.responses.functions import function_call_item
from ..wire.responses.items import (
    approval_id,
    approval_request_item,
    call_item,
    call_item_id,
    list_tools_item,
    tool_error,
)
from ..wire.responses.mcp import held

__all__ = ("Server", "TurnItems", "answer_approvals", "check", "recorded_ends", "resolve")

OnEvents = Callable[[list[dict[str, Any]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Server:
    """A request's mcp tool on this worker: the turn's :class:`ToolServer` and the
    label the request gave it."""

    tool: ToolServer
    server_label: str


def _unusable(tools: Tools | None, specs: list[dict[str, Any]]) -> None:
    if tools is None and specs:
        raise param_error("this instance runs no tools", "mcp_unavailable", "tools")


def check(tools: Tools | None, specs: list[dict[str, Any]]) -> None:
    """Refuse a request whose mcp tools name a server it may not use (a 400 naming the
    field), before anything is stored or queued."""
    _unusable(tools, specs)
    for i, spec in enumerate(specs):
        _check_one(tools, spec, i)  # type: ignore[arg-type]


def _check_one(tools: Tools, spec: Mapping[str, Any], i: int) -> None:
    label, url = spec["server_label"], spec["server_url"]
    configured = tools.pool.server(label) is not None
    if url is None:
        if not configured:
            known = ", ".join(tools.pool.labels) or "none"
            raise param_error(
                f"tools[{i}].server_label {label!r} names no configured MCP server "
                f"(configured: {known}); a server_url names another",
                "unknown_server_label",
                f"tools[{i}].server_label",
            )
        return
    if configured:
        raise param_error(
            f"tools[{i}].server_label {label!r} is a configured server's: label the "
            "server_url otherwise, or leave server_url out to use the configured one",
            "server_label_conflict",
            f"tools[{i}].server_label",
        )
    if not tools.allows_server_url(url):
        raise param_error(
            f"tools[{i}].server_url is not allowed on this instance: an operator allows "
            "server URLs in [tools] allowed_server_urls",
            "server_url_not_allowed",
            f"tools[{i}].server_url",
        )


def resolve(tools: Tools | None, agent: AgentConfig, specs: list[dict[str, Any]]) -> list[Server]:
    """The request's servers on this worker (a server_url gets a connection of the
    worker's pool, with the agent's limits), checked again: the config may have been
    reloaded since the response was queued."""
    check(tools, specs)
    servers = []
    for spec in specs:
        label = spec["server_label"]
        if spec["server_url"] is not None:
            label = tools.server_url(agent, spec["server_url"], spec["headers"]) or ""  # type: ignore[union-attr]
        only = spec["allowed_tools"]
        waiting, exempt = held(spec)
        tool = ToolServer(label, None if only is None else frozenset(only), waiting, exempt,
                          spec["server_label"])  # fmt: skip
        servers.append(Server(tool, spec["server_label"]))
    return servers


class TurnItems(Listener):
    """Hears a Responses turn with tools and tells its events (from ``events``) to
    ``on_events``: the text, an ``mcp_list_tools`` item per server the request named,
    an ``mcp_call`` item per call of any of the turn's MCP tools (the agent's own too),
    and the ``function_call`` items it ends with. ``events.items`` is the output so far."""

    __slots__ = (
        "_named", "_toolset", "events", "listed", "on_events", "on_limits", "rid", "text_filter",
    )  # fmt: skip

    def __init__(
        self,
        rid: str,
        events: ResponseEvents,
        servers: list[Server],
        on_events: OnEvents | None,
        on_limits: Callable[[Mapping[str, str]], None] | None = None,
        text_filter: Callable[[str], str] | None = None,
    ) -> None:
        self.rid, self.events = rid, events
        self.on_events, self.on_limits = on_events, on_limits
        # Sees each piece of text first; what it returns is streamed ("": nothing).
        self.text_filter = text_filter
        # pool label -> the request's server_label (a configured server is its label)
        self._named = {s.tool.label: s.server_label for s in servers}
        self._toolset = ToolSet()
        # False: the request's servers are not listed again (a turn that goes on after
        # approvals: the response that asked for them listed them).
        self.listed = True

    async def _tell(self, events: list[dict[str, Any]]) -> None:
        if events and self.on_events is not None:
            await self.on_events(events)

    def limits(self, headers: Mapping[str, str]) -> None:
        if self.on_limits is not None:
            self.on_limits(headers)

    async def delta(self, text: str) -> None:
        if self.text_filter is not None and not (text := self.text_filter(text)):
            return
        if self.on_events is not None:
            await self.on_events(self.events.text(text))
        elif self.events.message_at is None:
            # Unstreamed: no events to build, only the message's place to note.
            self.events.message_at = len(self.events.items)

    def use(self, tools: ToolSet) -> None:
        """The tools the calls it hears of are made with (when it heard no listing)."""
        self._toolset = tools

    async def tools_listed(self, tools: ToolSet) -> None:
        self._toolset = tools
        if not self.listed:
            return
        for label, server_label in self._named.items():
            error = tools.unavailable.get(label)
            listed = [(f.tool, f.description, f.parameters) for f in tools.functions
                      if f.label == label]  # fmt: skip
            item = list_tools_item(self.rid, server_label, listed, error)
            await self._tell(self.events.tool_item(item))

    def _item(self, call: Mapping[str, Any], **fields: Any) -> dict[str, Any] | None:
        function = call.get("function") or {}
        target = self._toolset.find(str(function.get("name")))
        if target is None:  # a tool the turn does not have: no server's call
            return None
        server_label = self._named.get(target.label, target.label)
        return call_item(self.rid, str(call.get("id")), server_label, target.tool,
                         str(function.get("arguments") or ""), **fields)  # fmt: skip

    async def tool_step(self, calls: Sequence[Mapping[str, Any]]) -> None:
        """A step starts: the calls an earlier attempt left running end, unless they
        are among this step's (a resumed response's first step goes on with them)."""
        ids = [call_item_id(self.rid, str(call.get("id"))) for call in calls]
        await self._tell(self.events.calls_starting(ids))

    async def tool_call(self, call: Mapping[str, Any], server: str) -> None:
        item = self._item(call)
        if item is not None:
            await self._tell(self.events.call_started(item))

    async def tool_result(
        self, call: Mapping[str, Any], result: ToolResult, approval: str | None = None
    ) -> None:
        """A call ended (``approval``: the approval request it ran after)."""
        if result.is_error:
            item = self._item(call, status="failed", error=tool_error(result.text, result.outcome),
                              approval_request_id=approval)  # fmt: skip
        else:
            item = self._item(call, status="completed", output=result.text,
                              approval_request_id=approval)  # fmt: skip
        if item is not None:
            await self._tell(self.events.call_ended(item))

    def serves(self, call: Mapping[str, Any]) -> bool:
        """Whether ``call`` is of one of the turn's server-side tools."""
        function = call.get("function") or {}
        return self._toolset.find(str(function.get("name"))) is not None

    async def function_calls(self, calls: list[dict[str, Any]]) -> None:
        """The turn ended with calls of the client's function tools: a
        ``function_call`` item each."""
        for call in calls:
            await self._tell(self.events.function_call(function_call_item(self.rid, call)))

    async def approval_requests(self, calls: list[dict[str, Any]]) -> None:
        """The turn ended with calls that wait for the client's approval: an
        ``mcp_approval_request`` each (none for the calls of no server's tool)."""
        for call in calls:
            item = self._item(call)
            if item is not None:
                request = approval_request_item(self.rid, str(call.get("id")),
                                                item["server_label"], item["name"],
                                                item["arguments"])  # fmt: skip
                await self._tell(self.events.tool_item(request))


def recorded_ends(
    events: ResponseEvents, rid: str, steps: Sequence[RecordedStep]
) -> list[dict[str, Any]]:
    """The ends of the recorded steps' calls that ``events`` (resumed) has in progress,
    each with its recorded result: for an attempt that found the turn stored by an
    earlier one, which stopped before these ends reached the stream."""
    out = []
    for step in steps:
        for message in step.results:
            item = events.open_call(call_item_id(rid, str(message.get("tool_call_id"))))
            if item is None:
                continue
            text, outcome = str(message.get("content") or ""), message.get("status")
            if outcome is None:
                out += events.call_ended({**item, "status": "completed", "output": text})
            else:
                error = tool_error(text, str(outcome))
                out += events.call_ended({**item, "status": "failed", "error": error})
    return out


async def answer_approvals(
    tools: Tools,
    agent: AgentConfig,
    toolset: ToolSet,
    previous: str,
    pending: list[dict[str, Any]],
    approvals: list[dict[str, Any]],
    items: TurnItems,
    deadline: float,
) -> list[dict[str, Any]]:
    """The results of the calls a previous response ended with (``pending``, in
    OpenAI's chat shape), as ``tool`` messages: each approved one run (its
    ``mcp_call`` told to ``items``), each refused (or not answered) one a result that
    says so, for the model to read. An approval that answers none of them is a 400."""
    answers = {a["approval_request_id"]: a for a in approvals}
    waiting = [approval_id(previous, str(call.get("id"))) for call in pending]
    unknown = answers.keys() - set(waiting)
    if unknown:  # refused before any call runs
        raise param_error(
            f"approval request {min(unknown)[:64]!r} is not one the previous response waits for",
            "unknown_approval_request",
            "input",
        )
    messages = []
    for call, request_id in zip(pending, waiting, strict=True):
        answer = answers.get(request_id)
        if answer is not None and answer["approve"]:
            await items.tool_call(call, "")
            function = call.get("function") or {}
            result = await tools.call(agent, toolset, str(function.get("name")),
                                      function.get("arguments"), deadline)  # fmt: skip
            await items.tool_result(call, result, request_id)
            message = {"role": "tool", "tool_call_id": call.get("id"), "content": result.text}
        else:
            why = "the user did not approve the call"
            if answer is not None and answer["reason"]:
                why += f": {answer['reason']}"
            message = {"role": "tool", "tool_call_id": call.get("id"), "content": why}
        messages.append(message)
    return messages
