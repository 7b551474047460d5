"""Who may call agentd (``[auth]``): keys, connection tokens, tenants and their limits
(docs/auth.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .fields import opt

TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SCOPES = ("chat", "responses", "sessions", "state", "admin")
TOKEN_ALGORITHMS = ("HS256", "RS256", "ES256")


def _check_tenant(value: str) -> str | None:
    if not TENANT_RE.fullmatch(value):
        return f"must be 1-64 of a-z, 0-9, _ and -, starting with a letter or digit; got {value!r}"
    return None


@dataclass(frozen=True)
class LimitsConfig:
    """Rate limits and quotas (0 = no limit), per key or per tenant."""

    requests_per_minute: int = opt(0, min=0, max=10**9)
    # Prompt + completion tokens, from the upstream's usage (or an estimate).
    tokens_per_minute: int = opt(0, min=0, max=10**12)
    max_concurrent_turns: int = opt(0, min=0, max=10**6)
    tokens_per_day: int = opt(0, min=0, max=10**15)
    tokens_per_month: int = opt(0, min=0, max=10**15)


@dataclass(frozen=True)
class TenantConfig:
    """One tenant's own limits (every other tenant has ``[auth.tenant_limits]``)."""

    name: str = opt("", check=_check_tenant)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


@dataclass(frozen=True)
class TokensConfig:
    """Connection tokens (JWTs) minted by the operator's own backend for end users."""

    # "" = connection tokens are not accepted.
    algorithm: str = opt("", choices=("", *TOKEN_ALGORITHMS))
    # HS256: the shared secret is read from this environment variable.
    secret_env: str = opt("AGENTD_TOKEN_SECRET")
    # RS256 / ES256: the PEM file of the public key.
    public_key_file: str = opt("")
    # When set, a token's ``iss`` / ``aud`` must match.
    issuer: str = opt("")
    audience: str = opt("")
    # Clock skew tolerated on ``exp`` and ``nbf``, in seconds.
    leeway_s: float = opt(30.0, min=0.0, max=3600.0)
    # A WebSocket whose token expired is closed this long after, unless refreshed.
    ws_grace_s: float = opt(30.0, min=0.0, max=3600.0)


@dataclass(frozen=True)
class AuthConfig:
    """Who may call agentd: see docs/auth.md."""

    # none: anyone who reaches the port; keys: API keys and connection tokens.
    mode: str = opt("none", choices=("none", "keys"))
    # Run with mode = "none" on an address other than loopback (refused otherwise).
    allow_open: bool = opt(False)
    # The environment variable holding the operator's admin key (never written to disk).
    admin_key_env: str = opt("AGENTD_ADMIN_KEY")
    # Seconds a worker trusts a key record it read; revocations are pushed sooner.
    key_cache_s: float = opt(2.0, min=0.0, max=3600.0)
    # Seconds an unknown key is remembered as unknown (bounds look-ups under a flood).
    negative_cache_s: float = opt(1.0, min=0.0, max=60.0)
    # Store look-ups per second a worker makes for key ids it has never seen (0 =
    # unbounded); past it such keys get 503 and a retry.
    key_lookups_per_s: float = opt(200.0, min=0.0, max=1e6)
    # What a request gets when the shard holding its limits is down: refused (closed,
    # 503) or admitted unlimited (open).
    limits_unavailable: str = opt("closed", choices=("closed", "open"))
    # Limits every tenant has unless ``[[auth.tenants]]`` names it.
    tenant_limits: LimitsConfig = field(default_factory=LimitsConfig)
    tenants: tuple[TenantConfig, ...] = opt(())
    tokens: TokensConfig = field(default_factory=TokensConfig)

    def limits_of(self, tenant: str) -> LimitsConfig:
        for t in self.tenants:
            if t.name == tenant:
                return t.limits
        return self.tenant_limits
