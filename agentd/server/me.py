"""``GET /v1/me``: who the caller's credential is, and what it may do.

Any valid credential may ask (it tells the caller only about itself, never a secret),
so a client such as the console shows the views its scopes allow instead of probing
paths for 403s.
"""

from __future__ import annotations

from aiohttp import web

from .auth import identity_of
from .http import json_response

__all__ = ("setup",)


async def me(request: web.Request) -> web.Response:
    identity = identity_of(request)
    return json_response(
        {
            "object": "identity",
            "kind": identity.kind,
            "tenant": identity.tenant,
            "key_id": identity.key_id or None,
            "subject": identity.subject or None,
            "scopes": sorted(identity.scopes),
            "agents": None if identity.agents is None else sorted(identity.agents),
            "sessions": None if identity.sessions is None else sorted(identity.sessions),
            "expires_at": identity.expires_at,
        }
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/me", me)
