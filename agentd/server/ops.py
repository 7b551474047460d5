"""Operations endpoints: liveness, readiness, metrics and build/run information."""

from __future__ import annotations

import asyncio
import functools
import logging
import platform

from aiohttp import web

from .. import __version__, fastpath
from ..errors import AgentdError
from ..metrics import CONTENT_TYPE
from .http import json_response
from .keys import BACKENDS, CACHE, CONFIG, METRICS, RUNNER, STATE

__all__ = ("event_loop_name", "setup")

log = logging.getLogger(__name__)


def event_loop_name() -> str:
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop turns."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: not draining and every dependency reachable; else 503 and why."""
    state = request.app[STATE]
    if state.draining:
        return json_response({"status": "draining"}, status=503)
    reasons = [r for r in await asyncio.gather(*(check() for check in state.readiness)) if r]
    if reasons:
        return json_response({"status": "unavailable", "reasons": reasons}, status=503)
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    request.app[CACHE].report_sizes()
    request.app[BACKENDS].report_load()
    try:
        await request.app[RUNNER].report()
    except AgentdError as exc:
        log.warning("job queue figures left out of /metrics: %s", exc.message)
    metrics = request.app[METRICS]
    # This worker's hot counts flushed here, on the loop's thread, where they are counted.
    metrics.flush()
    render = functools.partial(metrics.render, flush=False)
    body = await asyncio.get_running_loop().run_in_executor(None, render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def info(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    state = request.app[STATE]
    return json_response(
        {
            "version": __version__,
            "mode": config.mode,
            "workers": state.workers,
            "worker": {
                "id": state.info.id,
                "generation": state.info.generation,
                "pid": state.info.pid,
            },
            "fastpath": fastpath.IMPLEMENTATION,
            "python": platform.python_version(),
            "loop": event_loop_name(),
        }
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/info", info)
