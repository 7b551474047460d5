"""One MCP tool server as a worker sees it: a long-lived session, opened on first use.

The ``mcp`` SDK runs a session in anyio task groups, which must be entered and left by
the same task. So each connection is owned by a task of its own (``mcp-connection:
LABEL``) that opens the transport and the session, then waits until the connection is
lost or closed; callers (request handlers, the agent loop) only send requests on it, each
call in a child task that a timeout, a lost connection or the caller's cancellation
cancels (the SDK then sends ``notifications/cancelled`` to the server).

Messages from the server pass through a relay that notices what the SDK leaves to a
log: the end of the stream (a stdio server that died) and a message that is not valid
JSON-RPC. Either ends the connection: calls in flight get an error result at once, not
at their deadline, and the next call opens a new connection. Failed connects are
spaced by exponential backoff. The tool list is cached until the server says it changed
(``notifications/tools/list_changed``) or the connection is renewed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp.types as types
from mcp import ClientSession
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST, PARSE_ERROR, REQUEST_TIMEOUT

from .. import __version__
from ..config import McpServerConfig
from .errors import ToolServerError
from .result import ToolResult, failure, from_mcp
from .transports import open_transport

__all__ = ("Connection", "ToolServerError")

log = logging.getLogger(__name__)

CLIENT_INFO = types.Implementation(name="agentd", version=__version__)
# Backoff between failed connects: doubling from the first to the last.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
# How long a connect (transport and MCP initialize) may take at most.
CONNECT_TIMEOUT_S = 30.0
# How long a cancelled call gets to send its cancel notification and end.
CANCEL_GRACE_S = 2.0
# What a streamable HTTP server answers (404) for a session it does not know, as it
# restarted: the request never reached a tool, so it is sent again on a new session.
# The SDKs word it differently ("Session not found", "Session terminated", ...).
STALE_WORDS = ("not found", "terminated", "expired", "unknown", "invalid")


class _StaleSession(Exception):
    pass


@dataclass(eq=False)
class _Live:
    """One connection's session and how it ended (``fault``; first reason wins)."""

    lost: asyncio.Event = field(default_factory=asyncio.Event)
    session: ClientSession | None = None
    fault: str | None = None

    def fail(self, why: str) -> None:
        if self.fault is None:
            self.fault = why
        self.lost.set()


def describe(exc: BaseException) -> str:
    """A short reason from an exception, looking inside exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Connection:
    """The worker's connection to one configured MCP server."""

    def __init__(self, server: McpServerConfig, literal: bool = False) -> None:
        """``literal``: header values are sent as written, ``env:NAME`` included (a
        server a request named must not read agentd's environment)."""
        self.server = server
        self._literal = literal
        self.label = server.label
        self._live: _Live | None = None
        self._connecting: asyncio.Future[_Live] | None = None
        self._owners: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._tools: tuple[types.Tool, ...] | None = None
        self._generation = 0
        self._listing = asyncio.Lock()
        self.calls: set[asyncio.Task[Any]] = set()

    @property
    def idle(self) -> bool:
        return not self.calls

    @property
    def where(self) -> str:
        return f"tool server {self.label!r}"

    # -- the session --------------------------------------------------------------

    async def _session(self, deadline: float) -> _Live:
        """The live session, connecting (or waiting out the backoff) before ``deadline``."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise ToolServerError(f"{self.where}: the worker is shutting down")
            live = self._live
            if live is not None and not live.lost.is_set():
                return live
            if self._connecting is None:
                wait = self._retry_at - loop.time()
                if wait > 0:
                    if loop.time() + wait > deadline:
                        raise ToolServerError(
                            f"{self.where} is unavailable ({self._last_error}); "
                            f"agentd tries again in {wait:.1f} s"
                        )
                    await asyncio.sleep(wait)
                    continue
                self._connecting = loop.create_future()
                # Retrieved here: a caller that gave up on its deadline will not.
                self._connecting.add_done_callback(_retrieve)
                # An old connection's task may still be closing (a stdio server gets
                # seconds to exit): the new one does not wait for it.
                owner = asyncio.create_task(
                    self._own(self._connecting), name=f"mcp-connection:{self.label}"
                )
                self._owners.add(owner)
                owner.add_done_callback(self._owners.discard)
            try:
                live = await asyncio.wait_for(
                    asyncio.shield(self._connecting), max(0.0, deadline - loop.time())
                )
            except TimeoutError:
                raise ToolServerError(f"{self.where}: no connection in time") from None
            if live.lost.is_set():  # lost as soon as opened
                raise ToolServerError(live.fault or f"{self.where}: the connection was lost")
            return live

    async def _own(self, ready: asyncio.Future[_Live]) -> None:
        """The connection's task: open, serve until lost or closed, then close."""
        live = _Live()
        try:
            async with open_transport(self.server, literal=self._literal) as (read, write):
                relay_in, relay_out = anyio.create_memory_object_stream[Any](0)
                async with anyio.create_task_group() as group:
                    group.start_soon(self._relay, read, relay_in, live)
                    async with ClientSession(
                        relay_out, write, message_handler=self._on_message, client_info=CLIENT_INFO
                    ) as session:
                        with anyio.fail_after(CONNECT_TIMEOUT_S):
                            await session.initialize()
                        live.session = session
                        self._live = live
                        self._failures = 0
                        self._invalidate()
                        ready.set_result(live)
                        self._connecting = None
                        log.info("connected to %s", self.where)
                        await live.lost.wait()
                    group.cancel_scope.cancel()
        except Exception as exc:
            live.fail(f"the connection to {self.where} failed ({describe(exc)})")
            if not ready.done():
                self._failures += 1
                delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._failures - 1))
                self._retry_at = asyncio.get_running_loop().time() + delay
                self._last_error = describe(exc)
                log.warning("cannot connect to %s: %s", self.where, self._last_error)
                ready.set_exception(
                    ToolServerError(f"cannot connect to {self.where} ({self._last_error})")
                )
            else:
                log.warning("%s: %s", self.where, live.fault)
        finally:
            live.fail(f"the connection to {self.where} was closed")
            if self._live is live:
                self._live = None
            if self._connecting is ready:
                self._connecting = None
            if not ready.done():  # cancelled while connecting
                ready.set_exception(ToolServerError(f"{self.where}: the connect was cancelled"))

    async def _relay(self, source: Any, sink: Any, live: _Live) -> None:
        """Pass the server's messages to the session; a malformed one, or the end of
        the stream, ends the connection (the SDK would only log it)."""
        # The fault is recorded before the sink closes: calls that fail on the closed
        # session then say why.
        async with sink:
            try:
                async for item in source:
                    if isinstance(item, Exception):
                        live.fail(
                            f"{self.where} sent a message that is not valid JSON-RPC "
                            f"({describe(item)})"
                        )
                        return
                    await sink.send(item)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                pass
            live.fail(f"{self.where} closed the connection")

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            log.debug("%s: tool list changed", self.where)
            self._invalidate()

    def _invalidate(self) -> None:
        self._generation += 1
        self._tools = None

    # -- requests -----------------------------------------------------------------

    async def list_tools(self, timeout_s: float) -> tuple[types.Tool, ...]:
        """The server's tools, from the cache when it is current."""
        if (tools := self._tools) is not None:
            return tools
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self._listing:  # one listing at a time; the others use its result
            if (tools := self._tools) is not None:
                return tools
            for attempt in range(2):
                live = await self._session(deadline)
                generation = self._generation
                try:
                    tools = await asyncio.wait_for(
                        self._fetch_tools(live), max(0.0, deadline - loop.time())
                    )
                except TimeoutError:
                    raise ToolServerError(f"{self.where} did not list its tools in time") from None
                except MCPError as exc:
                    if self.server.url and _is_stale(exc) and attempt == 0:
                        live.fail("stale session")
                        continue
                    if exc.code == CONNECTION_CLOSED:
                        live.fail(f"the connection to {self.where} was lost")
                    raise ToolServerError(
                        f"{self.where} could not list its tools ({live.fault or exc.message})"
                    ) from None
                if generation == self._generation:
                    self._tools = tools
                return tools
        raise ToolServerError(f"{self.where} could not list its tools")

    async def _fetch_tools(self, live: _Live) -> tuple[types.Tool, ...]:
        assert live.session is not None
        tools: list[types.Tool] = []
        cursor: str | None = None
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await live.session.list_tools(params=params)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return tuple(tools)

    async def call(
        self, tool: str, arguments: dict[str, Any], timeout_s: float, max_bytes: int
    ) -> ToolResult:
        """Call ``tool``; every failure is an error result (cancellation propagates)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for attempt in range(2):
            try:
                live = await self._session(deadline)
            except ToolServerError as exc:
                return failure(str(exc), "unavailable")
            try:
                return await self._call_on(live, tool, arguments, deadline, timeout_s, max_bytes)
            except _StaleSession:
                live.fail("stale session")
                if attempt:
                    break
        return failure(f"{self.where} keeps refusing its session", "failed")

    async def _call_on(
        self,
        live: _Live,
        tool: str,
        arguments: dict[str, Any],
        deadline: float,
        timeout_s: float,
        max_bytes: int,
    ) -> ToolResult:
        assert live.session is not None
        task = asyncio.create_task(
            live.session.call_tool(tool, arguments), name=f"mcp-call:{self.label}:{tool}"
        )
        self.calls.add(task)
        task.add_done_callback(self.calls.discard)
        lost = asyncio.create_task(live.lost.wait())
        try:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            done, _ = await asyncio.wait(
                {task, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            await _cancel(task)
            raise
        finally:
            lost.cancel()
        if task in done and not task.cancelled():
            return self._outcome(live, tool, task, max_bytes)
        await _cancel(task)
        if live.lost.is_set():
            return failure(self._lost(live, tool), "failed")
        return failure(
            f"the tool {tool!r} of {self.where} did not answer within {timeout_s:g} s; "
            f"the call was cancelled",
            "timeout",
        )

    def _outcome(
        self, live: _Live, tool: str, task: asyncio.Task[Any], max_bytes: int
    ) -> ToolResult:
        try:
            result = task.result()
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                message = self._lost(live, tool)
                live.fail(f"the connection to {self.where} was lost")  # the next call renews it
                return failure(message, "failed")
            if self.server.url and _is_stale(exc):
                raise _StaleSession from None
            if exc.code == REQUEST_TIMEOUT:
                return failure(f"the tool {tool!r} of {self.where} timed out", "timeout")
            if exc.code == PARSE_ERROR:
                return failure(
                    f"{self.where} answered the call of {tool!r} with a message that is not "
                    f"valid JSON-RPC",
                    "failed",
                )
            return failure(f"{self.where} refused the call of {tool!r}: {exc.message}", "error")
        except Exception as exc:
            return failure(
                f"{self.where} answered the call of {tool!r} with an invalid result "
                f"({describe(exc)})",
                "failed",
            )
        if not isinstance(result, types.CallToolResult):
            return failure(f"{self.where} answered {tool!r} with an unknown result", "failed")
        return from_mcp(result, max_bytes)

    def _lost(self, live: _Live, tool: str) -> str:
        why = live.fault or f"the connection to {self.where} was lost"
        return f"the call of {tool!r} failed: {why}"

    async def close(self, grace_s: float = 10.0) -> None:
        """End the connection (a stdio server's process with it); bounded by ``grace_s``."""
        self._closed = True
        live = self._live
        if live is not None:
            live.fail(f"{self.where}: the worker is shutting down")
        owners = set(self._owners)
        if not owners:
            return
        for owner in owners:
            if self._connecting is not None:  # still connecting: nothing to end gently
                owner.cancel()
        _, pending = await asyncio.wait(owners, timeout=grace_s)
        for owner in pending:
            owner.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace_s)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _is_stale(exc: MCPError) -> bool:
    message = exc.message.lower()
    return (
        exc.code in (INVALID_REQUEST, REQUEST_TIMEOUT)  # -32001 in the TypeScript SDK
        and "session" in message
        and any(word in message for word in STALE_WORDS)
    )


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a call and give it the time to tell the server."""
    if task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
