"""The tool calls a response's turn answers before the model runs: the client's
``function_call_output`` items and, for the calls a previous response held for approval,
the MCP calls run (or refused) here; and a refusal of a function tool named as the
request gave it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..agent import Agents
from ..errors import BadRequest
from ..schema import pending_calls
from ..store import Store
from ..wire.responses import CreateRequest, ResponseView
from .mcp import Server, TurnItems, answer_approvals

__all__ = ("ATTEMPT_LOOKBACK", "in_request_terms", "outputs_of", "pending_answers")

# Session messages searched for a turn an earlier attempt already stored.
ATTEMPT_LOOKBACK = 200


def _name(call: Mapping[str, Any]) -> str:
    function = call.get("function")
    return str(function.get("name")) if isinstance(function, Mapping) else ""


def outputs_of(req: CreateRequest) -> list[str]:
    """The call ids the input's leading ``function_call_output`` items answer (calls
    the previous response ended with)."""
    ids = []
    for message in req.messages:
        if message.get("role") != "tool":
            break
        ids.append(message["tool_call_id"])
    return ids


def in_request_terms(exc: BadRequest, req: CreateRequest) -> BadRequest:
    """A refusal of one of the request's function tools, naming it as the request gave
    it (``tools[i].name``) rather than as the model was given it."""
    param = str((exc.detail or {}).get("param", ""))
    match = re.fullmatch(r"tools\[(\d+)\]\.function\.name", param)
    if match is None or int(match[1]) >= len(req.function_at):
        return exc
    i = req.function_at[int(match[1])]
    message = exc.message.replace(f"tools[{match[1]}]", f"tools[{i}]", 1)
    return BadRequest(message, code=exc.code, detail={**(exc.detail or {}),
                                                      "param": f"tools[{i}].name"})  # fmt: skip


async def pending_answers(
    store: Store, agents: Agents, view: ResponseView, servers: list[Server],
    items: TurnItems | None, deadline: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """The tool messages answering the calls the session's history ends with that
    the input's ``function_call_output`` items do not answer (those of the previous
    response's approval requests), or [] when there are none. An output that answers
    no call it ends with is a 400 ``unknown_tool_call``, a function call left
    unanswered ``tool_calls_unanswered``. Without ``previous_response_id`` (a
    conversation or session continued) no approval is answered."""
    req = view.request
    if view.session_id is None:
        return []
    previous = req.previous_response_id or ""
    of = f"response {previous!r}" if previous else "the conversation"
    history = await store.history(view.session_id, limit=ATTEMPT_LOOKBACK)
    pending = pending_calls(history)
    outputs = outputs_of(req)
    unknown = [call_id for call_id in outputs if call_id not in pending]
    if unknown:
        raise BadRequest(
            f"function_call_output call_id {unknown[0][:64]!r} answers no function call of {of}",
            code="unknown_tool_call",
            detail={"param": "input"},
        )
    if not pending:
        if req.approvals:
            raise BadRequest(
                f"response {req.previous_response_id!r} waits for no approval",
                code="unknown_approval_request",
                detail={"param": "input"},
            )
        return []
    said = next(m for m in reversed(history) if m.get("tool_calls"))
    calls = [c for c in said["tool_calls"] if c.get("id") in pending and c["id"] not in outputs]
    if not calls:
        return []  # all answered by the client
    tools, agent = agents.tools, agents.get(req.agent)
    if tools is None and req.approvals:
        raise BadRequest("this instance runs no tools", code="mcp_unavailable")
    toolset = None
    if tools is not None and items is not None and req.previous_response_id is not None:
        toolset = await tools.for_agent(
            agent, builtins=agents.builtin_specs, extra=tuple(s.tool for s in servers)
        )
    # The client's function calls are not the server's to answer.
    theirs = [c for c in calls if toolset is None or toolset.find(_name(c)) is None]
    if theirs:
        ids = ", ".join(str(c.get("id"))[:64] for c in theirs[:5])
        raise BadRequest(
            f"no function_call_output for the function calls of {of} ({ids}): send one for each",
            code="tool_calls_unanswered",
            detail={"param": "input"},
        )
    assert tools is not None and items is not None and toolset is not None
    items.use(toolset)
    return await answer_approvals(tools, agent, toolset, previous, calls,
                                  req.approvals, items, deadline)  # fmt: skip
