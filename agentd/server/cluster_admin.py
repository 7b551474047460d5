"""The service registry over HTTP: ``GET /v1/admin/instances`` lists every live worker of
every instance, with the figures it wrote with its last heartbeat (``presence``).

The path needs the ``admin`` scope (the middleware checks it). Reading it changes
nothing, so it writes no audit line (a console polls it every few seconds).
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from .http import json_response
from .keys import STORE
from .presence import TTL_S, Presence

__all__ = ("PRESENCE", "setup")

log = logging.getLogger(__name__)

PRESENCE = web.AppKey("presence", Presence)


async def list_instances(request: web.Request) -> web.Response:
    data = []
    for member in await request.app[STORE].registry.members(TTL_S):
        try:
            entry = orjson.loads(member.entry)
        except orjson.JSONDecodeError:
            log.warning("registry entry %s is not JSON: skipped", member.id)
            continue
        entry["id"] = member.id
        entry["last_seen"] = member.last_seen
        data.append(entry)
    return json_response({"object": "list", "data": data})


async def _start(app: web.Application) -> None:
    await app[PRESENCE].start()


async def _leave(app: web.Application) -> None:
    await app[PRESENCE].leave()


def setup(app: web.Application) -> None:
    """Routes, and this worker's heartbeat: from start-up (after the store's start) to
    the start of its drain."""
    app[PRESENCE] = Presence(app)
    app.on_startup.append(_start)
    app.on_shutdown.insert(0, _leave)
    app.router.add_get("/v1/admin/instances", list_instances)
