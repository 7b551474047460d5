"""The tools part's own exception, apart from the ``mcp`` SDK that only a worker with
a tool server imports."""

from __future__ import annotations

__all__ = ("ToolServerError",)


class ToolServerError(Exception):
    """A tool server cannot be reached or listed; the message says why, for the model
    and the operator alike."""
