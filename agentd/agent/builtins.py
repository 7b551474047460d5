"""agentd's own tools, label ``agentd``: an agent calls another agent, and agents share
versioned documents in the store (docs/tools.md, "Built-in tools").

They run as the turn that calls them: in its tenant, with its caller's identity (the
agents it may use, the ``state`` scope) and its deadline. Like an MCP tool's, every
failure is a result the model reads; a built-in's error result is the same JSON error
object the HTTP API answers (``{"error": {"message", "type", "code", ...}}``), so a
version conflict carries ``current``: the document's value and version now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson

from ..config import BUILTIN_LABEL, AgentConfig, Config, ToolLimits
from ..errors import AgentdError, BadRequest, NotFound, UpstreamTimeout
from ..store import StateDoc, Store
from ..tools import ToolResult, Tools, ToolSpec, arguments_of, failure, truncate
from .types import TurnRequest, TurnResult

__all__ = ("AgentRunner", "Builtins", "builtin_specs")

log = logging.getLogger(__name__)

# The most agent names listed in call_agent's description (the schema's enum has all).
LISTED_AGENTS = 50

_NAME = {"type": "string", "description": "1-200 characters of A-Z a-z 0-9 . _ : -"}
_IF_VERSION = {
    "type": "integer",
    "minimum": 0,
    "description": "write only over this version (0: only if the document does not exist); "
    "on a conflict the result holds the current value and version",
}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def builtin_specs(config: Config) -> tuple[ToolSpec, ...]:
    """The built-in tools as the model is offered them (every agent's the same)."""
    names = [a.name for a in config.agents]
    listed = ", ".join(names[:LISTED_AGENTS]) + (", ..." if len(names) > LISTED_AGENTS else "")
    return (
        ToolSpec(
            "call_agent",
            "Ask another agent. It runs one turn on `input` (its user message; it sees no "
            "other history) with its own instructions and tools, and its final answer is "
            f"the result. Agents: {listed}.",
            _object(
                {
                    "agent": {"type": "string", "enum": names},
                    "input": {"type": "string", "description": "the agent's user message"},
                },
                ["agent", "input"],
            ),
        ),
        ToolSpec(
            "state_get",
            "Read a shared document: its value and version (version 0 and value null: "
            "there is none).",
            _object({"namespace": _NAME, "key": _NAME}, ["namespace", "key"]),
        ),
        ToolSpec(
            "state_put",
            "Write a shared document (any JSON value); with if_version, only over that "
            "version (compare-and-set). Returns the new value and version.",
            _object(
                {"namespace": _NAME, "key": _NAME, "value": {}, "if_version": _IF_VERSION},
                ["namespace", "key", "value"],
            ),
        ),
        ToolSpec(
            "state_patch",
            "Change fields of a shared document with a JSON merge patch (RFC 7386: an "
            "object's fields replace the document's, null removes one), atomically; with "
            "if_version, only over that version. Returns the new value and version.",
            _object(
                {
                    "namespace": _NAME,
                    "key": _NAME,
                    "patch": {"type": "object"},
                    "if_version": _IF_VERSION,
                },
                ["namespace", "key", "patch"],
            ),
        ),
    )


def _doc(doc: StateDoc | None) -> dict[str, Any]:
    """A document as the tools show it; none is version 0 (the store's "absent")."""
    return (
        {"value": None, "version": 0}
        if doc is None
        else {"value": doc.value, "version": doc.version}
    )


def _json(value: Any) -> ToolResult:
    return ToolResult(orjson.dumps(value).decode(), structured=value)


def _error(exc: AgentdError, outcome: str = "error") -> ToolResult:
    body = exc.to_dict()
    return ToolResult(orjson.dumps(body).decode(), is_error=True, structured=body, outcome=outcome)


class AgentRunner(Protocol):
    """What the built-ins use of the agents (:class:`~agentd.agent.turn.Agents`)."""

    config: Config
    store: Store
    tools: Tools | None

    def all(self) -> list[AgentConfig]: ...

    async def run(self, req: TurnRequest, *, deadline: float) -> TurnResult: ...


class Builtins:
    """The built-in tools as one turn calls them (made per turn; holds no connection)."""

    __slots__ = ("_agent", "_agents", "_req")

    def __init__(self, agents: AgentRunner, agent: AgentConfig, req: TurnRequest) -> None:
        self._agents, self._agent, self._req = agents, agent, req

    async def call(
        self,
        tool: str,
        name: str,
        arguments: str | Mapping[str, Any] | None,
        deadline: float,
    ) -> ToolResult:
        """Run built-in ``tool``, offered to the model as ``name``, with the arguments it
        wrote, before ``deadline``; counted in ``agentd_tool_calls_total`` as a server's
        call. Never raises but for the caller's cancellation."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "cancelled"
        try:
            result = await self._run(tool, name, arguments, deadline)
            outcome = result.outcome
            return result
        finally:
            if self._agents.tools is not None:
                self._agents.tools.pool.count(BUILTIN_LABEL, tool, outcome, loop.time() - started)

    async def _run(
        self, tool: str, name: str, arguments: str | Mapping[str, Any] | None, deadline: float
    ) -> ToolResult:
        parsed = arguments_of(name, arguments)
        if isinstance(parsed, ToolResult):
            return parsed
        runs: dict[str, Callable[[dict[str, Any], float], Awaitable[ToolResult]]] = {
            "call_agent": self._call_agent,
            "state_get": self._state_get,
            "state_put": self._state_put,
            "state_patch": self._state_patch,
        }
        run = runs.get(tool)
        if run is None:  # a name of BUILTIN_TOOLS with no code here: a bug
            return failure(f"agentd has no tool {tool!r}", "error")
        if deadline <= asyncio.get_running_loop().time():
            return failure(f"no time was left in the turn to call {name!r}", "timeout")
        try:
            return await run(parsed, deadline)
        except UpstreamTimeout as exc:
            return _error(exc, "timeout")
        except AgentdError as exc:
            return _error(exc)
        except TimeoutError:
            return failure(f"{name!r} did not end within its deadline", "timeout")
        except Exception:
            log.exception("built-in tool %r failed", name)
            return failure(f"the call of {name!r} failed inside agentd", "failed")

    # -- call_agent ---------------------------------------------------------------------

    async def _call_agent(self, args: dict[str, Any], deadline: float) -> ToolResult:
        name = _string(args, "agent")
        text = _string(args, "input")
        _only(args, "agent", "input")
        req, agents = self._req, self._agents
        limit = agents.config.tools.max_agent_depth
        if req.depth >= limit:
            raise BadRequest(
                f"agent {name!r} was not called: agents call agents at most {limit} deep "
                f"([tools] max_agent_depth = {limit}), and this turn is {req.depth} deep",
                code="agent_depth_exceeded",
            )
        if name not in {a.name for a in agents.all()}:
            known = ", ".join(a.name for a in agents.all())
            raise NotFound(f"no agent named {name!r} (agents: {known})", code="model_not_found")
        if req.identity is not None:
            req.identity.check_agent(name)
        sub = TurnRequest(
            name,
            [{"role": "user", "content": text}],
            tenant=req.tenant,
            identity=req.identity,
            request_class=req.request_class,
            depth=req.depth + 1,
        )
        # A tool call like any: within the agent's tool_timeout_s, and its turn's deadline.
        limits = self._limits()
        deadline = min(deadline, asyncio.get_running_loop().time() + limits.tool_timeout_s)
        try:
            done = await agents.run(sub, deadline=deadline)
        except UpstreamTimeout as exc:
            raise UpstreamTimeout(
                f"agent {name!r} did not answer within the call's deadline (tool_timeout_s "
                f"= {limits.tool_timeout_s:g} s, or the end of this turn): {exc.message}"
            ) from exc
        said, cut = truncate(done.text, limits.max_tool_output_bytes)
        return ToolResult(said, truncated=cut)

    def _limits(self) -> ToolLimits:
        return self._agents.config.tools.limits_for(self._agent)

    # -- shared state -------------------------------------------------------------------

    def _store(self) -> Store:
        """The caller's tenant's store, if the caller may use shared state."""
        if self._req.identity is not None:
            self._req.identity.require("state")
        return self._agents.store.for_tenant(self._req.tenant)

    async def _bounded(self, work: Awaitable[StateDoc], deadline: float) -> StateDoc:
        """A store call within the agent's tool timeout and the turn's deadline."""
        left = deadline - asyncio.get_running_loop().time()
        async with asyncio.timeout(min(self._limits().tool_timeout_s, left)):
            return await work

    async def _state_get(self, args: dict[str, Any], deadline: float) -> ToolResult:
        namespace, key = _string(args, "namespace"), _string(args, "key")
        _only(args, "namespace", "key")
        try:
            doc = await self._bounded(self._store().state_get(namespace, key), deadline)
        except NotFound:
            return _json(_doc(None))
        return _json(_doc(doc))

    async def _state_put(self, args: dict[str, Any], deadline: float) -> ToolResult:
        namespace, key = _string(args, "namespace"), _string(args, "key")
        if "value" not in args:
            raise BadRequest("'value' is missing: the document to write", code="invalid_request")
        expected = _version(args)
        _only(args, "namespace", "key", "value", "if_version")
        put = self._store().state_put(namespace, key, args["value"], expected_version=expected)
        return _json(_doc(await self._bounded(put, deadline)))

    async def _state_patch(self, args: dict[str, Any], deadline: float) -> ToolResult:
        namespace, key = _string(args, "namespace"), _string(args, "key")
        patch = args.get("patch")
        if not isinstance(patch, dict):
            raise BadRequest(
                "'patch' must be a JSON object (a merge patch)", code="invalid_request"
            )
        expected = _version(args)
        _only(args, "namespace", "key", "patch", "if_version")
        patched = self._store().state_patch(namespace, key, patch, expected_version=expected)
        return _json(_doc(await self._bounded(patched, deadline)))


def _string(args: Mapping[str, Any], field: str) -> str:
    value = args.get(field)
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}"
        raise BadRequest(f"{field!r} must be a string, and is {what}", code="invalid_request")
    return value


def _version(args: Mapping[str, Any]) -> int | None:
    value = args.get("if_version")
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise BadRequest(
            "'if_version' must be an integer from 0 (0: only if the document does not exist)",
            code="invalid_request",
        )
    return value


def _only(args: Mapping[str, Any], *fields: str) -> None:
    extra = sorted(set(args) - set(fields))
    if extra:
        raise BadRequest(
            f"unknown arguments {', '.join(map(repr, extra))} (it takes {', '.join(fields)})",
            code="invalid_request",
        )
