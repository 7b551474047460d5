"""The output items of server-side MCP tools in a response, in OpenAI's shapes
(``mcp_list_tools``, ``mcp_call``, ``mcp_approval_request``; they validate against the
official SDK's ``ResponseOutputItem``). Their ids derive from the response id and what
they are about, so every attempt on every instance renders the same ones. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = (
    "approval_id",
    "approval_request_item",
    "call_item",
    "call_item_id",
    "list_tools_item",
    "tool_error",
)

# JSON-RPC codes of the failures that are not the tool's own answer (the tool's own
# error is an ``mcp_tool_execution_error``): no answer in time, no connection, a broken
# connection or answer, a call the turn gave up.
_PROTOCOL_CODES = {"timeout": -32001, "unavailable": -32000, "failed": -32603, "cancelled": -32800}


def _item_id(prefix: str, kind: bytes, response_id: str, about: str) -> str:
    digest = hashlib.sha256(b"agentd.%s\x00%s\x00%s" % (kind, response_id.encode(), about.encode()))
    return prefix + digest.hexdigest()[:48]


def call_item_id(response_id: str, call_id: str) -> str:
    """The ``mcp_call`` item of the model's call ``call_id``."""
    return _item_id("mcp_", b"mcp_call", response_id, call_id)


def approval_id(response_id: str, call_id: str) -> str:
    """The ``mcp_approval_request`` item of the model's call ``call_id``."""
    return _item_id("mcpr_", b"mcp_approval", response_id, call_id)


def list_tools_item(
    response_id: str,
    server_label: str,
    tools: Iterable[tuple[str, str, Mapping[str, Any]]],
    error: str | None = None,
) -> dict[str, Any]:
    """A server's tools as the turn offered them: ``(name, description, input_schema)``
    each; ``error`` when the server could not list them."""
    item: dict[str, Any] = {
        "type": "mcp_list_tools",
        "id": _item_id("mcpl_", b"mcp_list_tools", response_id, server_label),
        "server_label": server_label,
        "tools": [
            {
                "name": name,
                "description": description,
                "input_schema": dict(schema),
                "annotations": None,
            }
            for name, description, schema in tools
        ],
    }
    if error is not None:
        item["error"] = error
    return item


def tool_error(text: str, outcome: str) -> dict[str, Any]:
    """An ``mcp_call``'s ``error``: the tool's own (``mcp_tool_execution_error``, its
    text as content), or a protocol failure with a JSON-RPC code."""
    if outcome in _PROTOCOL_CODES:
        return {"type": "mcp_protocol_error", "code": _PROTOCOL_CODES[outcome], "message": text}
    return {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": text}]}


def call_item(
    response_id: str,
    call_id: str,
    server_label: str,
    name: str,
    arguments: str,
    *,
    status: str = "in_progress",
    output: str | None = None,
    error: dict[str, Any] | None = None,
    approval_request_id: str | None = None,
) -> dict[str, Any]:
    """An ``mcp_call``: in progress (no output yet), ``completed`` with its output, or
    ``failed`` with its error."""
    return {
        "type": "mcp_call",
        "id": call_item_id(response_id, call_id),
        "server_label": server_label,
        "name": name,
        "arguments": arguments,
        "status": status,
        "output": output,
        "error": error,
        "approval_request_id": approval_request_id,
    }


def approval_request_item(
    response_id: str, call_id: str, server_label: str, name: str, arguments: str
) -> dict[str, Any]:
    """An ``mcp_approval_request``: the call waits for the client's answer."""
    return {
        "type": "mcp_approval_request",
        "id": approval_id(response_id, call_id),
        "server_label": server_label,
        "name": name,
        "arguments": arguments,
    }
