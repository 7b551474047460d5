"""The application factory: one aiohttp app per worker.

Each part of the HTTP surface is a route module with a ``setup(app)``; handlers reach
the config, store, agents, metrics and worker state through the keys in ``keys``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable

from aiohttp import web

from ..agent import Agents
from ..auth import Auth, Limiter, check_credentials
from ..backends import Backends
from ..cache import ResponseCache
from ..config import Config
from ..console import setup as setup_console
from ..jobs.runner import JobRunner
from ..jobs.service import Responses
from ..metrics import BackendMetrics, JobMetrics, Metrics, TenantMetrics, ToolMetrics
from ..runtime import WorkerState
from ..store import open_store
from ..store import preload as preload_store
from ..tools import ToolPool, Tools
from ..tools import preload as preload_tools
from . import (
    admin,
    cache_admin,
    chat,
    cluster_admin,
    conversations,
    events,
    jobs_admin,
    me,
    ops,
    passthrough,
    responses,
    sessions,
    state,
    usage,
    ws,
)
from .auth import authenticate
from .keys import (
    AGENTS,
    AUTH,
    BACKENDS,
    CACHE,
    CONFIG,
    METRICS,
    RESPONSES,
    RUNNER,
    STATE,
    STORE,
    TOOLS,
)
from .middleware import close_when_draining, observe

__all__ = ("check_startup", "create_app", "preload")

log = logging.getLogger(__name__)

PluginSetup = Callable[[web.Application], None]


async def _begin_drain(app: web.Application) -> None:
    """On shutdown, end event streams and tell every WebSocket client to go elsewhere
    (1001 going away)."""
    state = app[STATE]
    state.draining = True
    state.closing.set()
    # No new jobs from here; running ones get the drain's time, then go back to the queue.
    runner = asyncio.ensure_future(app[RUNNER].close(app[CONFIG].server.shutdown_timeout))
    sockets = list(state.websockets)
    if sockets:
        log.info("closing %d websocket(s) with 1001", len(sockets))
        await asyncio.gather(
            *(
                ws.close(code=1001, message=b"server draining: reconnect and resume")
                for ws in sockets
            ),
            return_exceptions=True,
        )
    await runner


async def _start_parts(app: web.Application) -> None:
    store = app[STORE]
    await store.start()
    app[STATE].readiness.append(store.readiness)
    await app[AUTH].start()
    await app[BACKENDS].start()
    await app[CACHE].start()
    await app[TOOLS].pool.start()
    await app[RUNNER].start()


async def _flush_metrics(app: web.Application) -> None:
    """What the worker counted in memory reaches the files that outlive it (every
    request has ended when the cleanup runs)."""
    app[METRICS].flush()


async def _close_parts(app: web.Application) -> None:
    # Stdio tool servers are this worker's children: stopped with it.
    await app[TOOLS].pool.close()
    await app[CACHE].close()
    await app[BACKENDS].close()
    await app[AUTH].close()
    limiter = app[AGENTS].limiter
    if limiter is not None:
        await limiter.close()
    await app[STORE].close()


def check_startup(config: Config) -> None:
    """``ConfigError`` for what would make every worker fail to start, found before any
    is forked or a reload replaces them: today, the credentials' key material."""
    check_credentials(config)


def preload(config: Config) -> None:
    """Import what ``config``'s workers will use beyond what importing this module did
    (the store's Redis client, the MCP SDK), without starting anything: the supervisor
    calls it before forking, so the workers share those modules (copy-on-write) instead
    of each importing them again, and a config that needs neither imports neither."""
    preload_store(config)
    preload_tools(config)


def create_app(config: Config, worker: WorkerState | None = None) -> web.Application:
    """Build a worker's application from a validated config; ``worker`` is the worker's
    run-time state, kept by whoever runs the worker (a fresh one if not given)."""
    app = web.Application(
        client_max_size=config.server.max_request_bytes, middlewares=[observe, authenticate]
    )
    app[CONFIG] = config
    app[METRICS] = metrics = Metrics()
    app[STATE] = worker or WorkerState(workers=config.server.workers)
    app[STORE] = store = open_store(config)
    store.count_waits(metrics.observe_wait)
    store.count_replica_reads(metrics.observe_replica_read)
    app[AUTH] = auth = Auth(config, store)
    app[BACKENDS] = backends = Backends(config.backends, BackendMetrics(metrics))
    app[CACHE] = cache = ResponseCache(config.cache, store.blobs, metrics)
    app[TOOLS] = Tools(config, ToolPool(config.mcp_servers, ToolMetrics(metrics)))
    named = tuple(t.name for t in config.auth.tenants)
    limiter = Limiter(config, store.limits, TenantMetrics(metrics, named), auth.keys)
    app[AGENTS] = agents = Agents(config, store, backends, metrics, cache, limiter, app[TOOLS])
    app[RESPONSES] = responses_api = Responses(config, store, agents)
    app[RUNNER] = JobRunner(
        config, responses_api, store.jobs, agents.admission, JobMetrics(metrics)
    )
    app.on_startup.append(_start_parts)
    app.on_shutdown.append(_begin_drain)
    app.on_response_prepare.append(close_when_draining)
    app.on_cleanup.append(_flush_metrics)
    app.on_cleanup.append(_close_parts)
    ops.setup(app)
    chat.setup(app)
    responses.setup(app)
    cache_admin.setup(app)
    admin.setup(app)
    jobs_admin.setup(app)
    cluster_admin.setup(app)
    ws.setup(app)
    events.setup(app)
    sessions.setup(app)
    conversations.setup(app)
    state.setup(app)
    passthrough.setup(app)
    usage.setup(app)
    me.setup(app)
    setup_console(app, config.auth.mode)
    for spec in config.server.plugins:
        _load_plugin(spec)(app)
    return app


def _load_plugin(spec: str) -> PluginSetup:
    """``package.module:function`` → the function; it gets each worker's app to extend."""
    module_name, _, attr = spec.partition(":")
    setup = getattr(importlib.import_module(module_name), attr)
    if not callable(setup):
        raise TypeError(f"plugin {spec!r} is not callable")
    return setup
