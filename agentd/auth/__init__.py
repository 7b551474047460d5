"""Identities: API keys, connection tokens, tenants, scopes, rate limits and quotas."""

from .identity import ALL_SCOPES, OPEN, Identity
from .service import ADMIN, Auth, check_credentials

__all__ = ("ADMIN", "ALL_SCOPES", "OPEN", "Auth", "Identity", "check_credentials")
