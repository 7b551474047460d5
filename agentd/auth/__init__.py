"""Identities: API keys, connection tokens, tenants, scopes, rate limits and quotas."""

from .identity import ALL_SCOPES, OPEN, Identity
from .keys import KEY_ID_RE, new_key
from .service import ADMIN, Auth

__all__ = ("ADMIN", "ALL_SCOPES", "KEY_ID_RE", "OPEN", "Auth", "Identity", "new_key")
