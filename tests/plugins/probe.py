"""Routes for process tests: a request that takes a while, one that stops its worker's
event loop until told, and a WebSocket that stays open."""

from __future__ import annotations

import asyncio

from aiohttp import web

from agentd.server import tracked_websocket
from agentd.server.keys import STATE

IN_FLIGHT = web.AppKey("probe_in_flight", list)


async def slow(request: web.Request) -> web.Response:
    seconds = float(request.query.get("seconds", "1"))
    request.app[IN_FLIGHT].append(seconds)
    try:
        await asyncio.sleep(seconds)
    finally:
        request.app[IN_FLIGHT].remove(seconds)
    return web.json_response({"slept": seconds, "pid": request.app[STATE].info.pid})


async def hold(request: web.Request) -> web.Response:
    """Hold the worker's event loop (not only this request) until the test writes to the
    FIFO named ``fifo``: the worker handles no signal and accepts no connection meanwhile."""
    with open(request.query["fifo"], "rb") as fifo:  # noqa: ASYNC230 - blocking is the point
        fifo.read()
    return web.json_response({"pid": request.app[STATE].info.pid})


async def in_flight(request: web.Request) -> web.Response:
    """How many /test/slow requests this worker is in the middle of."""
    return web.json_response({"in_flight": len(request.app[IN_FLIGHT])})


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    with tracked_websocket(request.app, sock):
        await sock.send_str("hello")
        async for _ in sock:
            pass
    return sock


def setup(app: web.Application) -> None:
    app[IN_FLIGHT] = []
    app.router.add_get("/test/in-flight", in_flight)
    app.router.add_get("/test/slow", slow)
    app.router.add_get("/test/hold", hold)
    app.router.add_get("/test/ws", ws)


def broken(app: web.Application) -> None:
    raise RuntimeError("this plugin refuses to load")
