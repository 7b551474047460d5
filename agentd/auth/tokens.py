"""Connection tokens: JWTs the operator's own backend mints for end users' browsers and
apps, so they never hold an API key (docs/auth.md, "Connection tokens").

Only the configured algorithm is accepted: never ``none``, and never HS256 when the
key is a public one (the algorithm-confusion attack, where the public key is used as
an HMAC secret). Verification is PyJWT's; the claims agentd defines are checked here.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..config import SCOPES, TENANT_RE, ConfigError, TokensConfig
from ..errors import Unauthorized
from .identity import Identity

__all__ = (
    "DEFAULT_TOKEN_SCOPES",
    "TOKEN_SCOPES",
    "TokenVerifier",
    "invalid_token",
)

# What a token may be granted: everything but admin (an end user never administers).
TOKEN_SCOPES = frozenset(SCOPES) - {"admin"}
# A token without a ``scope`` claim: talk to agents and follow its sessions, not shared
# state (whose namespaces are the tenant's, not one end user's).
DEFAULT_TOKEN_SCOPES = frozenset({"chat", "responses", "sessions"})
# HS256 needs a key as long as its hash (RFC 7518 §3.2); RSA keys below 2048 bits are weak.
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
# Bounds on what a token may list, and on a subject (it is logged).
MAX_LISTED = 1000
MAX_NAME = 256
# Tokens verified recently, per worker: a client sends the same token with every request,
# and an ES256 signature costs ~0.15 ms to check. Only exact strings that verified are
# kept (a forged token is another string), each until its exp.
VERIFIED_CACHE = 4096
_REQUIRED = ("exp", "sub", "tenant")


def invalid_token(message: str) -> Unauthorized:
    return Unauthorized(f"invalid connection token: {message}", code="invalid_token")


class TokenVerifier:
    """Checks connection tokens against the configured algorithm and key."""

    def __init__(self, config: TokensConfig, key: Any) -> None:
        self.config = config
        self._key = key
        self._algorithms = [config.algorithm]
        self._verified: dict[str, tuple[float, Identity]] = {}

    @classmethod
    def from_config(cls, config: TokensConfig) -> TokenVerifier | None:
        """The verifier (None when tokens are off); ``ConfigError`` naming the setting
        when the key material is missing or unusable, so agentd refuses to start."""
        if not config.algorithm:
            return None
        if config.algorithm == "HS256":
            return cls(config, _secret(config.secret_env))
        return cls(config, _public_key(config.algorithm, config.public_key_file))

    def verify(self, token: str) -> Identity:
        """The token's identity; ``Unauthorized`` (401) for any token agentd must not trust."""
        known = self._verified.get(token)
        if known is not None:
            exp, identity = known
            # PyJWT's rule: expired once exp <= now - leeway.
            if exp > time.time() - self.config.leeway_s:
                return identity
            del self._verified[token]
        exp, identity = self._decode(token)
        if len(self._verified) >= VERIFIED_CACHE:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = (exp, identity)
        return identity

    def _decode(self, token: str) -> tuple[float, Identity]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                issuer=self.config.issuer or None,
                audience=self.config.audience or None,
                leeway=self.config.leeway_s,
                options={"require": list(_REQUIRED)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the connection token has expired", code="token_expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized(
                "the connection token is not valid yet (nbf or iat in the future)",
                code="token_not_yet_valid",
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"it has no {exc.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise invalid_token("wrong issuer (iss)") from None
        except jwt.InvalidAudienceError:
            raise invalid_token("wrong audience (aud)") from None
        except jwt.InvalidAlgorithmError:
            raise invalid_token(f"only {self.config.algorithm} tokens are accepted") from None
        except jwt.InvalidSignatureError:
            raise invalid_token("the signature does not verify") from None
        except jwt.PyJWTError as exc:  # malformed, bad claim types, unusable key for alg
            raise invalid_token(str(exc) or type(exc).__name__) from None
        identity = _identity(claims)
        return float(claims["exp"]), identity


def _identity(claims: dict[str, Any]) -> Identity:
    """The identity a verified token's claims describe (their shapes checked here)."""
    tenant = claims["tenant"]
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise invalid_token("tenant must be 1-64 of a-z, 0-9, _ and -")
    sub = claims["sub"]
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_NAME:
        raise invalid_token(f"sub must be a string of 1-{MAX_NAME} characters")
    exp = claims["exp"]
    # PyJWT compares int(exp): a string or a boolean would pass it.
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or not math.isfinite(exp):
        raise invalid_token("exp must be a number (Unix seconds)")
    return Identity(
        tenant=tenant,
        scopes=_scopes(claims.get("scope")),
        kind="token",
        subject=sub,
        agents=_names(claims, "agents"),
        sessions=_names(claims, "sessions"),
        expires_at=float(exp),
    )


def _scopes(scope: Any) -> frozenset[str]:
    if scope is None:
        return DEFAULT_TOKEN_SCOPES
    if not isinstance(scope, str):
        raise invalid_token("scope must be a space-separated string")
    scopes = frozenset(scope.split())
    if not scopes:
        raise invalid_token("scope names no scope")
    if not scopes <= TOKEN_SCOPES:
        raise invalid_token(
            f"scope may hold only {' '.join(sorted(TOKEN_SCOPES))}; "
            f"got {' '.join(sorted(scopes - TOKEN_SCOPES))}"
        )
    return scopes


def _names(claims: dict[str, Any], claim: str) -> frozenset[str] | None:
    """An optional list of names (``sessions``, ``agents``); None when absent: all."""
    value = claims.get(claim)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_LISTED or not _all_names(value):
        raise invalid_token(
            f"{claim} must be a list of at most {MAX_LISTED} strings of 1-{MAX_NAME} characters"
        )
    return frozenset(value)


def _all_names(values: Iterable[Any]) -> bool:
    return all(isinstance(v, str) and 0 < len(v) <= MAX_NAME for v in values)


# -- key material, read once at start-up -------------------------------------------------


def _secret(env: str) -> bytes:
    secret = os.environ.get(env, "").encode()
    if not secret:
        raise ConfigError(
            [f"auth.tokens.secret_env: ${env} is empty: HS256 tokens need the shared secret"]
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            [
                f"auth.tokens.secret_env: ${env} holds {len(secret)} bytes; HS256 needs "
                f"a random secret of at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)"
            ]
        )
    if b"-----BEGIN" in secret:  # a PEM key as an HMAC secret: the confusion attack's setup
        raise ConfigError(
            [f"auth.tokens.secret_env: ${env} holds a PEM key; HS256 needs a random secret"]
        )
    return secret


def _public_key(algorithm: str, path: str) -> Any:
    where = f"auth.tokens.public_key_file: {path!r}"
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{where} cannot be read: {exc.strerror or exc}"]) from None
    if b"PRIVATE KEY" in pem:
        raise ConfigError([f"{where} holds a private key: give agentd the public key only"])
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"{where} is not a PEM public key: {exc}"]) from None
    if algorithm == "RS256":
        if not isinstance(key, rsa.RSAPublicKey):
            raise ConfigError([f"{where} is not an RSA public key, as RS256 needs"])
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError([f"{where} is a {key.key_size}-bit RSA key; use {MIN_RSA_BITS}+"])
    elif not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError([f"{where} is not a P-256 (secp256r1) EC public key, as ES256 needs"])
    return key
