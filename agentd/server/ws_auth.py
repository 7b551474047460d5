"""A WebSocket's credential over the connection's life: a connection token (or any
credential with an expiry) ends, so the connection is warned when it does and closed
``auth.tokens.ws_grace_s`` later, unless the client sends a fresh token in-band
(``{"type": "auth", "token"}``, docs/protocol.md). An API key can be revoked, disabled
or narrowed while a connection it opened lives: every change to the key is looked at
again, and a key that no longer holds closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from ..auth import Identity
from ..errors import AgentdError, BadRequest
from .auth import credential_of, identity_of
from .keys import AUTH, CONFIG

__all__ = ("CLOSE_TOKEN_EXPIRED", "CLOSE_TOKEN_REFUSED", "CredentialWatch")

log = logging.getLogger(__name__)

# 4000 + the HTTP status, as the application range of close codes (RFC 6455 §7.4.2) allows.
CLOSE_TOKEN_EXPIRED = 4001  # expired and not refreshed within the grace
# A refresh for another identity or not covering the connection, or a revoked key.
CLOSE_TOKEN_REFUSED = 4003


class Connection(Protocol):
    """What the watch needs of its connection."""

    def send(self, frame: dict[str, Any]) -> None: ...

    def close_with(self, code: int, reason: bytes) -> None: ...


class CredentialWatch:
    """Warns, then closes, a connection whose credential expired; swaps in a refreshed one."""

    __slots__ = ("app", "conn", "credential", "identity", "recheck", "timer", "unwatch")

    def __init__(self, request: web.Request, conn: Connection) -> None:
        # The app and the identity, not the request: a connection outlives its upgrade
        # request, which it does not keep.
        self.app = request.app
        self.conn = conn
        self.timer: asyncio.TimerHandle | None = None
        # The credential in force, and the watch on its key record (API keys only).
        self.identity: Identity = identity_of(request)
        self.credential = credential_of(request)
        self.unwatch: Callable[[], None] | None = None
        self.recheck: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the timer for the current credential (none for one that never expires)."""
        self.stop()
        identity = self.identity
        self._arm(identity.expires_at)
        if identity.kind == "key":
            keys = self.app[AUTH].keys
            self.unwatch = keys.watch(identity.key_id, self._key_changed)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.unwatch is not None:
            self.unwatch()
            self.unwatch = None
        if self.recheck is not None:
            self.recheck.cancel()
            self.recheck = None

    def _key_changed(self) -> None:
        if self.recheck is None or self.recheck.done():
            self.recheck = asyncio.create_task(self._check_key())

    async def _check_key(self) -> None:
        """The key changed: read it again; revoked, disabled or without the ``chat``
        scope closes the connection, any other change is in force from now on."""
        try:
            new = await self.app[AUTH].identify(self.credential)
            new.require("chat")
        except AgentdError as exc:
            if exc.status not in (401, 403):
                return  # the store cannot tell now: the key's cache bound still holds
            log.info("websocket of %s closed: its key no longer holds", self.identity.who)
            self.recheck = None  # this task: not to be cancelled by stop()
            self.stop()
            self.conn.close_with(CLOSE_TOKEN_REFUSED, b"credential revoked")
            return
        old, self.identity = self.identity, new
        if new.expires_at != old.expires_at:
            self._arm(new.expires_at)

    def _arm(self, expires_at: float | None) -> None:
        """(Re)start the expiry timer; none for a credential that never expires. A timer,
        not a task: an idle connection runs nothing of its own."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if expires_at is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(max(0.0, expires_at - time.time()), self._expired,
                                         expires_at)  # fmt: skip

    def _expired(self, expires_at: float) -> None:
        grace_s = self.app[CONFIG].auth.tokens.ws_grace_s
        self.conn.send({"type": "auth_expired", "expired_at": expires_at, "closes_in_s": grace_s})
        self.timer = asyncio.get_running_loop().call_later(grace_s, self._grace_over)

    def _grace_over(self) -> None:
        self.timer = None
        log.info("websocket of %s closed: its credential expired", self.identity.who)
        self.conn.close_with(CLOSE_TOKEN_EXPIRED, b"token expired")

    async def refresh(self, frame: dict[str, Any], session_id: str | None) -> None:
        """An ``auth`` frame. A token that does not verify gets an error frame and the
        current one stays in force; a valid one for another tenant or subject, or one
        that does not cover this connection, closes it."""
        token = frame.get("token")
        if not isinstance(token, str) or not token:
            raise BadRequest("an auth frame needs a token (a string)", code="invalid_frame")
        new = await self.app[AUTH].identify(token)
        old = self.identity
        if (new.tenant, new.kind, new.subject, new.key_id) != (
            old.tenant,
            old.kind,
            old.subject,
            old.key_id,
        ):
            self._refuse(b"token for another identity")
            return
        try:
            new.require("chat")
            if session_id is not None:
                new.check_session(session_id)
        except AgentdError:
            self._refuse(b"token does not cover this connection")
            return
        self.identity = new
        self.credential = token
        self.start()
        self.conn.send({"type": "auth_ok", "expires_at": new.expires_at})

    def _refuse(self, reason: bytes) -> None:
        log.info("websocket of %s closed: refresh refused (%s)", self.identity.who, reason.decode())
        self.stop()
        self.conn.close_with(CLOSE_TOKEN_REFUSED, reason)
