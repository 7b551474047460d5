"""What the agent layer uses: an agent's tools in OpenAI's function-tool shape, and
calling one by the name the model was given.

Built-in tools (label ``agentd``, :data:`~agentd.config.BUILTIN_LABEL`) are served by
the layer above, which gives their specs to :meth:`Tools.for_agent` and runs their calls
itself: they are named like any server's tools, and never reach the pool.

Names: a tool keeps its own name, unless two of the agent's servers have a tool of that
name; then each of those is named ``LABEL__TOOL``. Characters OpenAI does not allow in a
function name (outside ``A-Za-z0-9_-``) become ``_``, and a name longer than 64 is cut
and ends with a hash of the whole, so every name is valid and distinct.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config import BUILTIN_LABEL, AgentConfig, Config, ToolLimits
from .errors import ToolServerError
from .pool import ToolPool
from .result import ToolResult, failure

__all__ = (
    "FunctionTool",
    "ToolServer",
    "ToolSet",
    "ToolSpec",
    "Tools",
    "arguments_of",
    "function_name",
)

log = logging.getLogger(__name__)

NAME_MAX = 64
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def function_name(*parts: str) -> str:
    """A valid OpenAI function name for a tool: parts joined by ``__``, cleaned, bounded."""
    whole = "__".join(parts)
    name = _NOT_ALLOWED.sub("_", whole)
    if len(name) > NAME_MAX:
        name = f"{name[: NAME_MAX - 9]}_{hashlib.sha1(whole.encode()).hexdigest()[:8]}"
    return name


def arguments_of(
    name: str, arguments: str | Mapping[str, Any] | None
) -> dict[str, Any] | ToolResult:
    """The arguments the model wrote for tool ``name`` (a JSON object, as text or
    parsed) as a dict, or the error result the model reads when they are not one."""
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError as exc:
            return failure(f"the arguments of {name!r} are not valid JSON: {exc}", "error")
    if arguments is not None and not isinstance(arguments, Mapping):
        return failure(f"the arguments of {name!r} must be a JSON object", "error")
    return dict(arguments or {})


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as its server lists it (the fields of MCP's ``Tool`` that name it): how a
    built-in tool is given to :meth:`Tools.for_agent`."""

    name: str
    description: str
    input_schema: dict[str, Any]
    title: str | None = None


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """One MCP tool offered to the model: its function name and schema, and where it
    lives (``label``, ``tool``)."""

    name: str
    description: str
    parameters: dict[str, Any]
    label: str
    tool: str

    def chat(self) -> dict[str, Any]:
        """Chat completions' ``tools`` item."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def responses(self) -> dict[str, Any]:
        """The Responses API's ``tools`` item."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


@dataclass(frozen=True, slots=True)
class ToolServer:
    """A tool server a request brings to one turn, next to the agent's own: its pool
    label (a configured label, or :meth:`Tools.server_url`'s), the tools wanted of it
    (None: all of them), and those whose calls wait for the client's approval: the
    ``held`` ones (None: all) but the ``exempt`` ones."""

    label: str
    only: frozenset[str] | None = None
    held: frozenset[str] | None = frozenset()
    exempt: frozenset[str] = frozenset()
    # What the request calls it, for the names of its tools ("": its label).
    name: str = ""

    def waits(self, tool: str) -> bool:
        """Whether a call of ``tool`` waits for the client's approval."""
        return (self.held is None or tool in self.held) and tool not in self.exempt


@dataclass(frozen=True)
class ToolSet:
    """An agent's tools for one turn, and the servers that could not list theirs."""

    functions: tuple[FunctionTool, ...] = ()
    unavailable: Mapping[str, str] = field(default_factory=dict)
    # The names of the functions whose calls wait for the client's approval: the loop
    # does not run them, the turn ends with them (a request's servers only).
    held: frozenset[str] = frozenset()

    def find(self, name: str) -> FunctionTool | None:
        for f in self.functions:
            if f.name == name:
                return f
        return None

    def chat(self) -> list[dict[str, Any]]:
        return [f.chat() for f in self.functions]


class Tools:
    """The agents' MCP tools over the worker's :class:`ToolPool`."""

    def __init__(self, config: Config, pool: ToolPool) -> None:
        self._config = config
        self._agents = {a.name: a for a in config.agents}
        self.pool = pool

    def limits(self, agent: str | AgentConfig) -> ToolLimits:
        return self._config.tools.limits_for(self._agent(agent))

    def allows_server_url(self, url: str) -> bool:
        """Whether a request may name ``url`` as an MCP server (``[tools]
        allowed_server_urls``)."""
        return self._config.tools.allows_url(url)

    def server_url(
        self, agent: str | AgentConfig, url: str, headers: Mapping[str, str] | None = None
    ) -> str | None:
        """The pool label for a server a request names by URL, within the agent's limits;
        ``None`` when ``[tools] allowed_server_urls`` does not allow it."""
        if not self.allows_server_url(url):
            return None
        limits = self.limits(agent)
        return self.pool.url_server(
            url, headers or {}, limits.tool_timeout_s, limits.max_tool_output_bytes
        )

    def _agent(self, agent: str | AgentConfig) -> AgentConfig:
        return self._agents[agent] if isinstance(agent, str) else agent

    async def for_agent(
        self,
        agent: str | AgentConfig,
        *,
        builtins: Sequence[ToolSpec] = (),
        extra: tuple[ToolServer, ...] = (),
    ) -> ToolSet:
        """The agent's tools now (from the cached lists, and ``builtins`` for the label
        ``agentd``), with those of the ``extra`` servers a request brings; a server that
        cannot list its tools is left out and named in ``unavailable``."""
        config = self._agent(agent)
        if not config.tools and not extra:
            return ToolSet()
        wanted: dict[str, set[str] | None] = {}  # label -> tools (None: all of them)
        for ref in config.tools:
            label, _, tool = ref.partition(":")
            if not tool:
                wanted[label] = None
            elif wanted.get(label, set()) is not None:
                wanted.setdefault(label, set()).add(tool)  # type: ignore[union-attr]
        for server in extra:  # a server both name has the tools of either
            if server.only is None:
                wanted[server.label] = None
            elif wanted.get(server.label, set()) is not None:
                wanted.setdefault(server.label, set()).update(server.only)  # type: ignore[union-attr]
        timeout = self.limits(config).tool_timeout_s
        found: list[tuple[str, Any]] = []
        if BUILTIN_LABEL in wanted:
            only = wanted.pop(BUILTIN_LABEL)
            found.extend((BUILTIN_LABEL, t) for t in builtins if only is None or t.name in only)
        unavailable: dict[str, str] = {}
        # Listed at once: a cold start waits for the slowest server, not for their sum.
        listings = await asyncio.gather(
            *(self.pool.list_tools(label, timeout) for label in wanted), return_exceptions=True
        )
        for (label, only), listed in zip(wanted.items(), listings, strict=True):
            if isinstance(listed, ToolServerError):
                log.warning("agent %r: %s", config.name, listed)
                unavailable[label] = str(listed)
                continue
            if isinstance(listed, BaseException):
                raise listed
            found.extend((label, t) for t in listed if only is None or t.name in only)
        # The agent's own tools never wait: only those the turn has from the request.
        own = {ref.partition(":")[0] for ref in config.tools}
        waiting = {s.label: s for s in extra if s.label not in own and s.held != frozenset()}
        named = {s.label: s.name for s in extra if s.name}
        held: set[str] = set()
        counts: dict[str, int] = {}
        for _, t in found:
            counts[t.name] = counts.get(t.name, 0) + 1
        functions: list[FunctionTool] = []
        taken: set[str] = set()
        for label, t in found:
            prefix = named.get(label, label)
            name = function_name(t.name) if counts[t.name] == 1 else function_name(prefix, t.name)
            if name in taken:  # two names that differ only in cleaned characters
                name = function_name(f"{name}_{hashlib.sha1(t.name.encode()).hexdigest()[:6]}")
            taken.add(name)
            if label in waiting and waiting[label].waits(t.name):
                held.add(name)
            functions.append(
                FunctionTool(
                    name=name,
                    description=t.description or t.title or "",
                    parameters=dict(t.input_schema) or EMPTY_SCHEMA,
                    label=label,
                    tool=t.name,
                )
            )
        return ToolSet(tuple(functions), unavailable, frozenset(held))

    async def call(
        self,
        agent: str | AgentConfig,
        tools: ToolSet,
        name: str,
        arguments: str | Mapping[str, Any] | None,
        deadline: float | None = None,
    ) -> ToolResult:
        """Call the tool the model named, with the arguments it wrote (a JSON object,
        as text or parsed), within the agent's limits and before ``deadline`` (the
        turn's, on the event loop's clock). Never raises but for the caller's
        cancellation: a bad name or bad arguments are error results too."""
        target = tools.find(name)
        if target is None:
            known = ", ".join(f.name for f in tools.functions) or "none"
            return failure(f"there is no tool named {name!r} (tools: {known})", "error")
        parsed = arguments_of(name, arguments)
        if isinstance(parsed, ToolResult):
            return parsed
        limits = self.limits(agent)
        timeout = limits.tool_timeout_s
        if deadline is not None:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return failure(f"no time was left in the turn to call {name!r}", "timeout")
            timeout = min(timeout, left)
        return await self.pool.call(
            target.label,
            target.tool,
            parsed,
            timeout_s=timeout,
            max_output_bytes=limits.max_tool_output_bytes,
        )
