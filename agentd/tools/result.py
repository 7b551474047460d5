"""What a tool call gives back: a :class:`ToolResult`, never an exception.

A tool that reports an error, a timeout, a tool server that is down, crashes or speaks
malformed JSON-RPC: each becomes a result with ``is_error`` set and a message the model
can read, so a turn goes on (the model may try another way) instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    # The SDK's types take seconds to import on a loaded machine: only a worker that
    # talks to a tool server imports them (:mod:`.connection`).
    import mcp.types as types

__all__ = ("OUTCOMES", "ToolResult", "failure", "from_mcp", "truncate")

# The outcomes counted in agentd_tool_calls: the tool answered (ok), or reported an
# error (error); no answer in time (timeout); no connection (unavailable); the
# connection broke or the answer was not valid MCP (failed); the caller gave up
# (cancelled).
OUTCOMES = ("ok", "error", "timeout", "unavailable", "failed", "cancelled")

TRUNCATED = "\n[truncated: the tool returned {total} bytes, {kept} are shown]"


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool call's result as the model will see it.

    ``text`` is the content (text blocks joined; other blocks described in a line);
    ``structured`` the server's JSON result when it gave one (``None`` if too large);
    ``truncated`` says ``text`` was cut at the output bound; ``outcome`` is one of
    :data:`OUTCOMES`."""

    text: str
    is_error: bool = False
    structured: Any = None
    truncated: bool = False
    outcome: str = "ok"


def failure(message: str, outcome: str) -> ToolResult:
    """A call that did not produce the tool's own answer."""
    return ToolResult(text=message, is_error=True, outcome=outcome)


def _block_text(block: types.ContentBlock) -> str:
    import mcp.types as types  # imported already by the connection that got ``block``

    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        kind = "image" if isinstance(block, types.ImageContent) else "audio"
        return f"[{kind}: {block.mime_type}, {len(block.data) * 3 // 4} bytes, not shown]"
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            return resource.text
        return f"[resource {resource.uri}: binary, not shown]"
    if isinstance(block, types.ResourceLink):
        return f"[resource {block.uri}]"
    return f"[{getattr(block, 'type', 'content')}: not shown]"


def truncate(text: str, max_bytes: int) -> tuple[str, bool]:
    """``text`` within ``max_bytes`` of UTF-8, the cut said at its end; and whether cut."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text, False
    note_len = len(TRUNCATED.format(total=len(data), kept=max_bytes).encode())
    if max_bytes <= note_len:  # no room to say it: the flag alone does
        return data[:max_bytes].decode(errors="ignore"), True
    # errors="ignore" drops a character split by the cut.
    kept = data[: max_bytes - note_len].decode(errors="ignore")
    return kept + TRUNCATED.format(total=len(data), kept=len(kept.encode())), True


def from_mcp(result: types.CallToolResult, max_bytes: int) -> ToolResult:
    """An MCP ``tools/call`` result, bounded to ``max_bytes``."""
    structured = result.structured_content
    if result.content:
        text = "\n".join(_block_text(b) for b in result.content)
    elif structured is not None:
        text = orjson.dumps(structured).decode()
    else:
        text = ""
    text, truncated = truncate(text, max_bytes)
    if structured is not None and len(orjson.dumps(structured)) > max_bytes:
        structured, truncated = None, True
    return ToolResult(
        text=text,
        is_error=bool(result.is_error),
        structured=structured,
        truncated=truncated,
        outcome="error" if result.is_error else "ok",
    )
