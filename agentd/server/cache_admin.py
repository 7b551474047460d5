"""``DELETE /v1/cache``: empty the response cache everywhere.

L2 (Redis) and this instance's L3 file are emptied, and every worker of every instance
drops its L1 (told through the store's pub/sub, or within ``[cache] l1_max_staleness``).
Other instances' L3 files are not reachable from here: clear those through each
instance, or give L3 a TTL short enough for the purpose.
"""

from __future__ import annotations

from aiohttp import web

from .http import json_response
from .keys import CACHE

__all__ = ("setup",)


async def clear_cache(request: web.Request) -> web.Response:
    # An operator's action: once API keys exist it is limited to admin keys.
    removed = await request.app[CACHE].clear()
    return json_response({"cleared": True, "l2_entries": removed})


def setup(app: web.Application) -> None:
    app.router.add_delete("/v1/cache", clear_cache)
