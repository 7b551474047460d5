"""MCP tool calls in one process, straight to a tool server with the ``mcp`` client SDK.

The process opens one MCP session over streamable HTTP (``httpx2`` and the SDK's
``streamable_http_client``, as agentd's worker does) and shares it among its share of
the connections, each calling the tool back to back: the way a worker's turns share its
one session to a server. A call's latency is from ``call_tool`` to its result; a result
with ``is_error`` set, or whose text is not what the tool should answer, is an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from .common import Recorder, Spec, share

__all__ = ("run_mcp_calls",)

CONNECT_TIMEOUT_S = 10.0


def _text(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def _calls_phase(
    session: ClientSession,
    spec: Spec,
    arguments: dict[str, Any],
    expect: str | None,
    tasks: int,
    seconds: float,
    rec: Recorder | None,
) -> None:
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        while (sent := time.perf_counter()) < deadline:
            try:
                result = await session.call_tool(spec.tool, arguments)
            except Exception as exc:  # the SDK's errors have no common base of their own
                if rec is not None:
                    rec.error(type(exc).__name__)
                continue
            end = time.perf_counter()
            if rec is None or end > deadline:
                continue
            if result.is_error:
                rec.error("tool error")
            elif expect is not None and _text(result) != expect:
                rec.error("unexpected result")
            else:
                rec.ok(end - sent, end)

    await asyncio.gather(*(one() for _ in range(tasks)))


async def run_mcp_calls(
    spec: Spec,
    index: int,
    ready: Callable[[], object],
    arguments: dict[str, Any],
    expect: str | None,
) -> Recorder:
    """This process's share of the connections calling ``spec.tool`` over one session."""
    tasks = max(1, share(spec.connections, spec.procs, index))
    rec = Recorder()
    url = f"http://{spec.host}:{spec.port}{spec.path}"
    timeout = httpx2.Timeout(CONNECT_TIMEOUT_S, read=None)
    async with (
        httpx2.AsyncClient(timeout=timeout) as client,  # agentd's client: the same pool
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await asyncio.wait_for(session.initialize(), CONNECT_TIMEOUT_S)
        if spec.warmup > 0:
            await _calls_phase(session, spec, arguments, expect, tasks, spec.warmup, None)
        await asyncio.get_running_loop().run_in_executor(None, ready)
        rec.begin()
        await _calls_phase(session, spec, arguments, expect, tasks, spec.duration, rec)
        rec.finish()
        rec.elapsed = spec.duration
    return rec
