"""Waiting in tests: for a condition, never for a fixed time.

A test that sleeps "long enough" before it looks fails on a slow machine and wastes time
on a fast one. These helpers poll a predicate until it holds and return what it returned;
their limit only stops a test whose condition never comes, so it is generous.
``wait_until`` is for asyncio tests (the predicate may be a coroutine function),
``wait_until_sync`` for plain ones. ``pace`` is not a wait for anything: it spaces the
requests of a load a test generates, and ends at once when the load is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ("LIMIT_S", "pace", "wait_until", "wait_until_sync")

LIMIT_S = 30.0


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    limit: float = LIMIT_S,
    what: str = "",
    poll_s: float = 0.01,
) -> Any:
    """Poll ``predicate`` (awaiting what it returns, if awaitable) until the result is
    truthy, and return it; fail after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what or predicate}")
        await asyncio.sleep(poll_s)


def wait_until_sync(
    predicate: Callable[[], Any], limit: float = LIMIT_S, what: str = "", poll_s: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return it; fail after
    ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what or predicate}")
        time.sleep(poll_s)


async def pace(stop: asyncio.Event, seconds: float) -> None:
    """Space a generated load's requests (a client's pause, a health check's period):
    ``seconds``, or until ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
