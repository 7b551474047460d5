"""Tools for agents: MCP tool servers (streamable HTTP and stdio) as a per-worker pool
of long-lived client sessions, and what an agent's loop needs of them (docs/tools.md).

This part knows nothing of sessions or HTTP requests: the agent layer asks it which
tools an agent has (in OpenAI's function-tool shape) and calls them; every failure of a
call is a :class:`ToolResult` with ``is_error`` set, never an exception.
"""

from __future__ import annotations

from .errors import ToolServerError
from .pool import ToolPool, preload
from .result import OUTCOMES, ToolResult, failure, truncate
from .service import (
    FunctionTool,
    Tools,
    ToolServer,
    ToolSet,
    ToolSpec,
    arguments_of,
    function_name,
)

__all__ = (
    "OUTCOMES",
    "FunctionTool",
    "ToolPool",
    "ToolResult",
    "ToolServer",
    "ToolServerError",
    "ToolSet",
    "ToolSpec",
    "Tools",
    "arguments_of",
    "failure",
    "function_name",
    "preload",
    "truncate",
)
