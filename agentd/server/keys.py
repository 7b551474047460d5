"""What a worker's application carries: its config, metrics and run-time state, as app keys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web

from ..agent import Agents
from ..backends import Backends
from ..cache import ResponseCache
from ..config import Config
from ..jobs.runner import JobRunner
from ..jobs.service import Responses
from ..metrics import Metrics
from ..store import Store

__all__ = (
    "AGENTS",
    "BACKENDS",
    "CONFIG",
    "METRICS",
    "RESPONSES",
    "RUNNER",
    "STATE",
    "STORE",
    "ReadinessCheck",
    "WorkerInfo",
    "WorkerState",
)

ReadinessCheck = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class WorkerInfo:
    """Who serves: the worker's slot id, its generation (bumped per reload) and pid."""

    id: int = 0
    generation: int = 0
    pid: int = field(default_factory=os.getpid)


@dataclass
class WorkerState:
    """What a worker knows about itself at run time."""

    info: WorkerInfo
    workers: int
    draining: bool = False
    # Set when the worker starts draining: long-lived responses (SSE) end on it.
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # Each returns None when its dependency is fine, or why it is not (for /readyz).
    readiness: list[ReadinessCheck] = field(default_factory=list)
    websockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)


CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", WorkerState)
STORE = web.AppKey("store", Store)
BACKENDS = web.AppKey("backends", Backends)
AGENTS = web.AppKey("agents", Agents)
CACHE = web.AppKey("cache", ResponseCache)
RESPONSES = web.AppKey("responses", Responses)
RUNNER = web.AppKey("runner", JobRunner)


@contextlib.contextmanager
def tracked_websocket(app: web.Application, ws: web.WebSocketResponse) -> Iterator[None]:
    """Count an open WebSocket in /metrics and close it with 1001 when the worker drains."""
    state, gauge = app[STATE], app[METRICS].websockets
    state.websockets.add(ws)
    gauge.inc()
    try:
        yield
    finally:
        state.websockets.discard(ws)
        gauge.dec()
