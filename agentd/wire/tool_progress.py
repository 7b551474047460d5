"""How a server-side tool call shows while a turn streams (docs/protocol.md, "Tool
calls"): one object when the call starts and one when it ends, the same in chat
completion chunks (as the chunk's ``agentd`` field, next to an empty delta that standard
clients skip) and in WebSocket frames (their ``type`` is the object's)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ("call_ended", "call_started")


def _function(call: Mapping[str, Any]) -> Mapping[str, Any]:
    function = call.get("function")
    return function if isinstance(function, Mapping) else {}


def call_started(call: Mapping[str, Any], server: str) -> dict[str, Any]:
    """A call the agent's loop starts: its id, the tool's name as the model wrote it,
    the arguments (text, as written) and the tool server's label."""
    function = _function(call)
    return {
        "type": "tool_call",
        "call_id": call.get("id"),
        "name": function.get("name"),
        "arguments": function.get("arguments"),
        "server": server,
    }


def call_ended(
    call: Mapping[str, Any], outcome: str, is_error: bool, output: str
) -> dict[str, Any]:
    """A call that ended: its outcome (docs/tools.md) and the output the model reads."""
    return {
        "type": "tool_result",
        "call_id": call.get("id"),
        "name": _function(call).get("name"),
        "outcome": outcome,
        "is_error": is_error,
        "output": output,
    }
