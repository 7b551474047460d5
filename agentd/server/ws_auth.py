"""A WebSocket's credential over the connection's life: a connection token (or any
credential with an expiry) ends, so the connection is warned when it does and closed
``auth.tokens.ws_grace_s`` later, unless the client sends a fresh token in-band
(``{"type": "auth", "token"}``, docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..auth import Identity
from ..errors import AgentdError, BadRequest
from .auth import IDENTITY, identity_of
from .keys import AUTH, CONFIG

__all__ = ("CLOSE_TOKEN_EXPIRED", "CLOSE_TOKEN_REFUSED", "CredentialWatch")

log = logging.getLogger(__name__)

# 4000 + the HTTP status, as the application range of close codes (RFC 6455 §7.4.2) allows.
CLOSE_TOKEN_EXPIRED = 4001  # expired and not refreshed within the grace
CLOSE_TOKEN_REFUSED = 4003  # a refresh for another identity, or one not covering the connection

Send = Callable[[dict[str, Any]], None]
Close = Callable[[int, bytes], None]


class CredentialWatch:
    """Warns, then closes, a connection whose credential expired; swaps in a refreshed one."""

    def __init__(self, request: web.Request, send: Send, close: Close) -> None:
        self.request = request
        self.send, self.close = send, close
        self.grace_s = request.app[CONFIG].auth.tokens.ws_grace_s
        self.timer: asyncio.Task[None] | None = None

    @property
    def identity(self) -> Identity:
        return identity_of(self.request)

    def start(self) -> None:
        """Start the timer for the current credential (none for one that never expires)."""
        self.stop()
        expires_at = self.identity.expires_at
        if expires_at is not None:
            self.timer = asyncio.create_task(self._expire(expires_at))

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def _expire(self, expires_at: float) -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        self.send({"type": "auth_expired", "expired_at": expires_at, "closes_in_s": self.grace_s})
        await asyncio.sleep(self.grace_s)
        log.info("websocket of %s closed: its credential expired", self.identity.who)
        self.close(CLOSE_TOKEN_EXPIRED, b"token expired")

    async def refresh(self, frame: dict[str, Any], session_id: str | None) -> None:
        """An ``auth`` frame. A token that does not verify gets an error frame and the
        current one stays in force; a valid one for another tenant or subject, or one
        that does not cover this connection, closes it."""
        token = frame.get("token")
        if not isinstance(token, str) or not token:
            raise BadRequest("an auth frame needs a token (a string)", code="invalid_frame")
        new = await self.request.app[AUTH].identify(token)
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
        self.request[IDENTITY] = new
        self.start()
        self.send({"type": "auth_ok", "expires_at": new.expires_at})

    def _refuse(self, reason: bytes) -> None:
        log.info("websocket of %s closed: refresh refused (%s)", self.identity.who, reason.decode())
        self.stop()
        self.close(CLOSE_TOKEN_REFUSED, reason)
