"""A worker's MCP client sessions: one connection per configured server, opened on
first use and kept for the worker's life (see :mod:`agentd.tools.connection`)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config import ENV_REF, Config, McpServerConfig
from ..metrics import ToolMetrics
from .result import ToolResult, failure

if TYPE_CHECKING:
    import mcp.types as types

    from .connection import Connection

__all__ = ("ToolPool", "preload")

log = logging.getLogger(__name__)

# Servers named by URL in requests that a worker keeps connected at once; past it, the
# least recently used idle one is closed.
URL_SERVERS_MAX = 32
# The metrics' server label of every server named by URL (their URLs are not bounded).
URL_SERVER = "server_url"


class ToolPool:
    """The worker's tool servers by label: ``list_tools`` and ``call``."""

    def __init__(self, servers: tuple[McpServerConfig, ...], metrics: ToolMetrics | None) -> None:
        self._servers = {s.label: s for s in servers}
        self._connections = {s.label: _connection(s) for s in servers}
        self._metrics = metrics
        self._by_url: OrderedDict[str, Connection] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._servers)

    def server(self, label: str) -> McpServerConfig | None:
        return self._servers.get(label)

    async def start(self, environ: Mapping[str, str] | None = None) -> None:
        """Nothing connects before it is used; say now what would keep a server from it."""
        environ = os.environ if environ is None else environ
        for server in self._servers.values():
            for table in ("headers", "env"):
                for key, value in getattr(server, table).items():
                    name = value[len(ENV_REF) :] if value.startswith(ENV_REF) else None
                    if name is not None and name not in environ:
                        log.warning(
                            "tool server %r: %s %r names $%s, which is not set: its calls "
                            "will fail until it is",
                            server.label,
                            table,
                            key,
                            name,
                        )

    async def list_tools(
        self, label: str, timeout_s: float | None = None
    ) -> tuple[types.Tool, ...]:
        """A server's tools (cached until it says they changed); :class:`ToolServerError`
        when it cannot say, ``KeyError`` for a label not configured."""
        connection = self._connections.get(label) or self._by_url[label]
        return await connection.list_tools(timeout_s or connection.server.timeout_s)

    def url_server(
        self, url: str, headers: Mapping[str, str], timeout_s: float, max_output_bytes: int
    ) -> str:
        """The label of a connection to a server a request named by URL (whether the URL
        is allowed is the caller's rule). Requests naming the same URL and headers share
        it; header values are sent as given (``env:`` is not read: a request must not
        reach agentd's environment)."""
        key = hashlib.sha256(
            repr((url, sorted(headers.items()), timeout_s, max_output_bytes)).encode()
        ).hexdigest()[:24]
        label = f"url-{key}"
        connection = self._by_url.get(label)
        if connection is not None:
            self._by_url.move_to_end(label)
            return label
        server = McpServerConfig(
            label=label,
            url=url,
            headers=dict(headers),
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
        )
        self._by_url[label] = _connection(server, literal=True)
        for old_label, old in list(self._by_url.items()):
            if len(self._by_url) <= URL_SERVERS_MAX:
                break
            if old.idle and old_label != label:
                del self._by_url[old_label]
                task = asyncio.ensure_future(old.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        return label

    async def call(
        self,
        label: str,
        tool: str,
        arguments: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        max_output_bytes: int | None = None,
    ) -> ToolResult:
        """Call a tool; the server's own ``timeout_s`` and ``max_output_bytes`` bound
        those given. Never raises but for the caller's cancellation, which cancels the
        call on the server too."""
        connection = self._connections.get(label) or self._by_url.get(label)
        if connection is None:
            return failure(f"no tool server labelled {label!r}", "unavailable")
        metric_label = label if label in self._connections else URL_SERVER
        server = connection.server
        timeout = min(timeout_s or server.timeout_s, server.timeout_s)
        max_bytes = min(max_output_bytes or server.max_output_bytes, server.max_output_bytes)
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "cancelled"
        try:
            result = await connection.call(tool, arguments or {}, timeout, max_bytes)
            outcome = result.outcome
            return result
        finally:
            if self._metrics is not None:
                self._metrics.call(metric_label, tool, outcome, loop.time() - started)

    def count(self, server: str, tool: str, outcome: str, seconds: float) -> None:
        """Count a call that did not go through the pool (agentd's own tools, whose
        ``server`` is their label) with the pool's own."""
        if self._metrics is not None:
            self._metrics.call(server, tool, outcome, seconds)

    def in_flight(self) -> int:
        """Calls running now, over all servers."""
        everyone = (*self._connections.values(), *self._by_url.values())
        return sum(len(c.calls) for c in everyone)

    async def close(self) -> None:
        """Close every connection (and stop every stdio server's process)."""
        everyone = (*self._connections.values(), *self._by_url.values())
        await asyncio.gather(*(c.close() for c in everyone), *self._closing)


def _connection(server: McpServerConfig, literal: bool = False) -> Connection:
    """A connection to ``server``. Its module (the ``mcp`` SDK: seconds of imports on a
    loaded machine) is imported by the first worker that has a tool server, or before
    the workers are forked when the config may use one (:func:`preload`)."""
    from .connection import Connection

    return Connection(server, literal)


def preload(config: Config) -> None:
    """Import what talking to a tool server needs when ``config`` may have one (a
    configured server, or URLs a request may name): the supervisor does it before
    forking, so that its workers share the modules instead of importing them again."""
    if config.mcp_servers or config.tools.allowed_server_urls:
        from . import connection  # noqa: F401
