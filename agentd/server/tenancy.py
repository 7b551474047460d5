"""The caller's tenant's view of the store and of the Responses API: every handler that
touches a session, a state document or a response goes through these, so another
tenant's object answers exactly as a missing one (404, never 403: no existence oracle)."""

from __future__ import annotations

from aiohttp import web

from ..jobs.service import Responses
from ..store import Store
from .auth import identity_of
from .keys import RESPONSES, STORE

__all__ = ("responses_of", "store_of")


def store_of(request: web.BaseRequest) -> Store:
    """The store as the caller's tenant sees it."""
    return request.app[STORE].for_tenant(identity_of(request).tenant)


def responses_of(request: web.BaseRequest) -> Responses:
    """The Responses API over the caller's tenant's responses and sessions (those of
    its sessions only, for a credential narrowed to some)."""
    identity = identity_of(request)
    return request.app[RESPONSES].for_tenant(identity.tenant, identity.sessions)
