"""Identities: API keys, connection tokens, tenants, scopes, rate limits and quotas."""

from .headers import Rendered, header_lines
from .identity import ALL_SCOPES, OPEN, Identity
from .keys import KEY_ID_RE, new_key
from .limits import Limiter, Ticket
from .service import ADMIN, Auth, check_credentials

__all__ = (
    "ADMIN",
    "ALL_SCOPES",
    "KEY_ID_RE",
    "OPEN",
    "Auth",
    "Identity",
    "Limiter",
    "Rendered",
    "Ticket",
    "check_credentials",
    "header_lines",
    "new_key",
)
