"""Authentication at the door: every ``/v1`` request gets its caller's identity (or a
401) and is checked against the scope its path needs (or a 403) before any handler runs.

Health checks and ``/metrics`` are open, as load balancers and Prometheus call them
without keys (bind the metrics port to a private network; docs/auth.md).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from ..auth import OPEN, Identity
from ..errors import BadRequest
from .keys import AUTH

__all__ = (
    "IDENTITY",
    "WS_PATH",
    "WS_PROTOCOL",
    "authenticate",
    "check_ws_offer",
    "credential_of",
    "identity_of",
    "scope_for",
)

IDENTITY = web.RequestKey("identity", Identity)

WS_PATH = "/v1/ws"
# The WebSocket subprotocol agentd answers, and the prefix of the one carrying a credential.
WS_PROTOCOL = "agentd.v1"
BEARER_PROTOCOL = "bearer."

# Path prefix → the scope it needs ("": any valid credential), longest first.
_SCOPES: tuple[tuple[str, str], ...] = (
    ("/v1/chat/", "chat"),
    ("/v1/completions", "chat"),
    ("/v1/embeddings", "chat"),
    ("/v1/models", "chat"),
    ("/v1/ws", "chat"),
    ("/v1/responses", "responses"),
    ("/v1/conversations", "responses"),
    ("/v1/sessions", "sessions"),
    ("/v1/state", "state"),
    ("/v1/admin/", "admin"),
    ("/v1/cache", "admin"),
    ("/v1/", ""),
)


def scope_for(path: str) -> str | None:
    """The scope a path needs; None for the open paths outside ``/v1``."""
    for prefix, scope in _SCOPES:
        if path.startswith(prefix):
            return scope
    return None


def credential_of(request: web.BaseRequest) -> str | None:
    """The API key or connection token the request carries: ``Authorization: Bearer``,
    or, on the ``/v1/ws`` upgrade only, a ``bearer.<token>`` WebSocket subprotocol."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.path == WS_PATH and request.headers.get("Upgrade", "").lower() == "websocket":
        return _subprotocol_credential(request)
    return None


def _subprotocol_credential(request: web.BaseRequest) -> str | None:
    """Browsers cannot set headers on a WebSocket, but they can offer subprotocols:
    ``new WebSocket(url, ["agentd.v1", "bearer." + token])``. Unlike a query string,
    the offer is not written to access logs. The server answers ``agentd.v1``."""
    for offer in _offers(request):
        if offer.startswith(BEARER_PROTOCOL) and len(offer) > len(BEARER_PROTOCOL):
            return offer[len(BEARER_PROTOCOL) :]
    return None


def _offers(request: web.BaseRequest) -> list[str]:
    """The subprotocols a WebSocket upgrade offers, read as aiohttp reads them (the first
    header)."""
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return [offer.strip() for offer in header.split(",")]


def check_ws_offer(request: web.BaseRequest) -> None:
    """A credential offered as a subprotocol must come with ``agentd.v1``: a browser
    drops a connection whose server answers none of its offers, and aiohttp logs such an
    offer whole, credential included."""
    offers = _offers(request)
    if WS_PROTOCOL not in offers and any(o.startswith(BEARER_PROTOCOL) for o in offers):
        raise BadRequest(
            f"offer the {WS_PROTOCOL!r} subprotocol beside 'bearer.<token>'",
            code="invalid_subprotocol",
        )


def identity_of(request: web.BaseRequest) -> Identity:
    """The identity :func:`authenticate` found (open where the path needs none)."""
    identity: Identity = request.get(IDENTITY, OPEN)
    return identity


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[AUTH]
    if not auth.enabled:
        return await handler(request)  # every caller is OPEN: nothing to look up
    scope = scope_for(request.path)
    if scope is not None:
        credential = credential_of(request)
        # A key this worker already verified is found without a coroutine.
        identity = auth.known(credential)
        if identity is None:
            identity = await auth.identify(credential)
        if scope:
            identity.require(scope)
        request[IDENTITY] = identity
    return await handler(request)
