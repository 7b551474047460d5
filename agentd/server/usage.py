"""Usage: what a tenant's keys and tokens asked for, per UTC day.

- ``GET /v1/usage[?days=N]``: the caller's tenant, by day and by key (any valid
  credential).
- ``GET /v1/admin/usage[?days=N&tenant=T]``: every tenant with usage in those days, or
  the one named (the ``admin`` scope).

``days`` counts back from today (UTC, today included): 1 to :data:`MAX_DAYS`, default
:data:`DEFAULT_DAYS`. The counters are written by the limiter's settle of each request
(:mod:`agentd.auth.limits`); see docs/auth.md.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from aiohttp import web

from ..config import TENANT_RE
from ..errors import BadRequest
from ..store import USAGE_FIELDS, Limits, usage_of
from .auth import identity_of
from .http import json_response, query_int
from .keys import STORE

__all__ = ("DEFAULT_DAYS", "MAX_DAYS", "setup")

DEFAULT_DAYS = 7
MAX_DAYS = 366


def _days(request: web.Request) -> list[str]:
    """The days asked for, oldest first, as ``YYYYMMDD``."""
    n = query_int(request, "days", MAX_DAYS)
    if n is None:
        n = DEFAULT_DAYS
    if n < 1:
        raise BadRequest(f"days must be an integer from 1 to {MAX_DAYS}", code="invalid_range")
    today = datetime.datetime.now(datetime.UTC).date()
    return [(today - datetime.timedelta(days=i)).strftime("%Y%m%d") for i in range(n - 1, -1, -1)]


async def _tenant_usage(limits: Limits, tenant: str, days: list[str]) -> dict[str, Any]:
    records = await limits.usage(tenant, days)
    totals = dict.fromkeys(USAGE_FIELDS, 0)
    by_day = []
    for day in days:
        record = records.get(day)
        if record is None:
            continue
        day_totals, keys = usage_of(record)
        for name in USAGE_FIELDS:
            totals[name] += day_totals[name]
        by_day.append({"date": f"{day[:4]}-{day[4:6]}-{day[6:]}", **day_totals, "keys": keys})
    return {"object": "usage", "tenant": tenant, "totals": totals, "days": by_day}


async def usage(request: web.Request) -> web.Response:
    days = _days(request)
    tenant = identity_of(request).tenant
    return json_response(await _tenant_usage(request.app[STORE].limits, tenant, days))


async def admin_usage(request: web.Request) -> web.Response:
    days = _days(request)
    limits = request.app[STORE].limits
    tenant = request.query.get("tenant")
    if tenant is not None:
        if not TENANT_RE.fullmatch(tenant):
            raise BadRequest(f"no such tenant name: {tenant[:80]!r}", code="invalid_tenant")
        tenants = [tenant]
    else:
        tenants = await limits.tenants(days)
    found = await asyncio.gather(*(_tenant_usage(limits, t, days) for t in tenants))
    return json_response({"object": "list", "data": list(found)})


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/usage", usage)
    app.router.add_get("/v1/admin/usage", admin_usage)
