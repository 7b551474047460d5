"""The authenticator a worker asks who is calling: API keys, connection tokens, or nobody
(``auth.mode = "none"``)."""

from __future__ import annotations

import hmac
import logging
import os

from ..config import Config
from ..errors import Unauthorized
from ..store import Store
from .identity import ALL_SCOPES, OPEN, Identity
from .keys import KeyCache
from .tokens import TokenVerifier

__all__ = ("ADMIN", "Auth", "check_credentials", "looks_like_token")

log = logging.getLogger(__name__)

# The operator's admin key (from the environment) acts in the unnamed tenant, the one
# auth.mode = "none" uses, with every scope.
ADMIN = Identity(tenant="", scopes=ALL_SCOPES, kind="admin", key_id="admin")


def check_credentials(config: Config) -> None:
    """``ConfigError`` for credential material no worker could start with (the connection
    tokens' secret or key), read as a worker will, so it is reported before any starts."""
    if config.auth.mode != "none":
        TokenVerifier.from_config(config.auth.tokens)


def looks_like_token(credential: str) -> bool:
    """A JWT is three base64url parts joined by dots; an API key has none."""
    return credential.count(".") == 2


class Auth:
    """Turns a request's credential into an :class:`Identity`."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config.auth
        self.enabled = self.config.mode != "none"
        admin = os.environ.get(self.config.admin_key_env, "") if self.enabled else ""
        self._admin = admin.encode()
        # Only a credential of its length is compared with it (none when there is no
        # admin key): compare_digest tells lengths apart at once anyway (it hides where
        # values differ, not lengths).
        self._admin_len = len(admin)
        # API key records, cached per worker (see .keys).
        self.keys = KeyCache(store.keyring, self.config)
        # Connection tokens (JWTs); ConfigError when their key is missing or unusable.
        self.tokens = TokenVerifier.from_config(self.config.tokens) if self.enabled else None

    async def start(self) -> None:
        if not self.enabled:
            return
        await self.keys.start()
        if not self._admin:
            log.warning(
                "auth: no admin key in $%s: keys can be created by no one",
                self.config.admin_key_env,
            )

    async def close(self) -> None:
        await self.keys.close()

    def known(self, credential: str | None) -> Identity | None:
        """The caller's identity when it is found without waiting: ``auth.mode =
        "none"``, the operator's key, or an API key this worker verified before and
        holds fresh (:meth:`KeyCache.known`); None: ask :meth:`identify`."""
        if not self.enabled:
            return OPEN
        if not credential:
            return None
        if len(credential) == self._admin_len and hmac.compare_digest(
            credential.encode(), self._admin
        ):
            return ADMIN
        return self.keys.known(credential)

    async def identify(self, credential: str | None) -> Identity:
        """The caller's identity; ``Unauthorized`` for a missing or bad credential."""
        identity = self.known(credential)
        if identity is not None:
            return identity
        if not credential:
            raise Unauthorized(
                "no API key given: send it as 'Authorization: Bearer KEY'",
                code="missing_api_key",
            )
        if self.tokens is not None and looks_like_token(credential):
            return self.tokens.verify(credential)
        return await self.keys.identify(credential)
