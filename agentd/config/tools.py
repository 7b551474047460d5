"""Tools: MCP servers (``[[mcp_servers]]``) and the agent loop's limits (``[tools]``),
docs/tools.md."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .agents import AgentConfig, ToolLimits
from .fields import check_http_url, opt, optional

LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A header or environment value of this form names a variable of agentd's environment
# (read when the connection opens): secrets stay out of the file.
ENV_REF = "env:"
# The label of agentd's own tools (other agents, shared state), which no MCP server may
# take: an agent names them as "agentd" (all) or "agentd:NAME", like a server's.
BUILTIN_LABEL = "agentd"
BUILTIN_TOOLS = ("call_agent", "state_get", "state_put", "state_patch")


def _check_label(value: str) -> str | None:
    if not LABEL_RE.fullmatch(value):
        return f"must be 1-64 letters, digits, '_' or '-', got {value!r}"
    return None


@dataclass(frozen=True)
class McpServerConfig:
    """An MCP tool server: streamable HTTP (``url``) or a local process on stdio
    (``command``), used by the agents that name its label."""

    label: str = opt("", check=_check_label)
    url: str = opt("", check=optional(check_http_url))
    # HTTP headers sent with every request; a value "env:NAME" is read from $NAME.
    headers: dict[str, str] = field(default_factory=dict, metadata={})
    command: str = opt("")
    args: tuple[str, ...] = opt(())
    # Environment of the process (besides PATH, HOME, ...); "env:NAME" is read from $NAME.
    env: dict[str, str] = field(default_factory=dict, metadata={})
    # One call's deadline and the largest result kept, whatever the agent's limits.
    timeout_s: float = opt(60.0, min=0.001, max=3600.0)
    max_output_bytes: int = opt(1024 * 1024, min=1, max=64 * 1024 * 1024)

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"


@dataclass(frozen=True)
class ToolsConfig:
    """Tool limits every agent has, and the tool servers requests may name."""

    # URL prefixes a Responses API request may name as an MCP tool's server_url
    # (empty: none, only the configured labels).
    allowed_server_urls: tuple[str, ...] = opt((), check=check_http_url)
    # Model calls in one turn (each may ask for tools).
    max_steps: int = opt(8, min=1, max=1000)
    # One tool call's deadline, in seconds (also bounded by its server's timeout_s).
    tool_timeout_s: float = opt(30.0, min=0.001, max=3600.0)
    # The largest tool result the model sees, in bytes (also bounded by its server's).
    max_tool_output_bytes: int = opt(65536, min=1, max=64 * 1024 * 1024)
    # The whole turn's deadline, model and tool calls included, in seconds.
    max_turn_s: float = opt(300.0, min=0.001, max=86400.0)
    # How deep agents may call agents (call_agent): a client's turn is at depth 0, the
    # turn it calls at 1, and a call that would go deeper is an error result.
    max_agent_depth: int = opt(3, min=1, max=32)

    def limits_for(self, agent: AgentConfig) -> ToolLimits:
        """The agent's limits: its own where set, else these (all non-zero)."""
        own, base = agent.tool_limits, self
        return ToolLimits(
            max_steps=own.max_steps or base.max_steps,
            tool_timeout_s=own.tool_timeout_s or base.tool_timeout_s,
            max_tool_output_bytes=own.max_tool_output_bytes or base.max_tool_output_bytes,
            max_turn_s=own.max_turn_s or base.max_turn_s,
        )

    def allows_url(self, url: str) -> bool:
        """Whether ``url`` is under one of the allowed prefixes, at a path boundary
        (``https://tools.example`` does not allow ``https://tools.example.evil``)."""
        for prefix in self.allowed_server_urls:
            if url == prefix:
                return True
            if url.startswith(prefix) and (prefix.endswith("/") or url[len(prefix)] in "/?#"):
                return True
        return False
