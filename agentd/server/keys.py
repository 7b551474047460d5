"""What a worker's application carries: its config, parts and run-time state, as app keys."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiohttp import web

from ..agent import Agents
from ..auth import Auth
from ..backends import Backends
from ..cache import ResponseCache
from ..config import Config
from ..jobs.runner import JobRunner
from ..jobs.service import Responses
from ..metrics import Metrics
from ..runtime import WorkerState
from ..store import Store
from ..tools import Tools

__all__ = (
    "AGENTS",
    "AUTH",
    "BACKENDS",
    "CONFIG",
    "METRICS",
    "RESPONSES",
    "RUNNER",
    "STATE",
    "STORE",
    "TOOLS",
)

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", WorkerState)
STORE = web.AppKey("store", Store)
BACKENDS = web.AppKey("backends", Backends)
AGENTS = web.AppKey("agents", Agents)
AUTH = web.AppKey("auth", Auth)
CACHE = web.AppKey("cache", ResponseCache)
RESPONSES = web.AppKey("responses", Responses)
RUNNER = web.AppKey("runner", JobRunner)
# The agents' MCP tools: the worker's pool of tool server connections (docs/tools.md).
TOOLS = web.AppKey("tools", Tools)


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
