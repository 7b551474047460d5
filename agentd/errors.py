"""agentd's error types: each carries a stable ``code``, an HTTP ``status`` and a message.

Every layer raises these; ``server`` maps them to HTTP and WebSocket replies in one
place, in OpenAI's shape ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

from typing import Any

__all__ = (
    "AgentdError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Internal",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "StoreFull",
    "StoreNotDurable",
    "StoreUnavailable",
    "Unauthorized",
    "Unavailable",
    "UpstreamAuth",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamTimeout",
    "invalid_type",
    "param_error",
    "unknown_parameter",
)


class AgentdError(Exception):
    """Base error. Subclasses fix ``status``, ``type`` and a default ``code``."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
            self.type = "invalid_request_error" if status < 500 else "server_error"
        self.retry_after = retry_after
        self.detail = detail

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.detail:
            error.update(self.detail)
        return {"error": error}


class BadRequest(AgentdError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(AgentdError):
    """No credential, or one that is unknown, revoked, expired or forged (OpenAI's 401)."""

    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class Forbidden(AgentdError):
    """A valid credential without the scope or agent the request needs."""

    status, type, code = 403, "invalid_request_error", "permission_denied"


class NotFound(AgentdError):
    status, type, code = 404, "invalid_request_error", "not_found"


class Conflict(AgentdError):
    status, type, code = 409, "invalid_request_error", "conflict"


class PayloadTooLarge(AgentdError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RateLimited(AgentdError):
    status, type, code = 429, "rate_limit_error", "rate_limited"


class QuotaExceeded(RateLimited):
    """A token budget (per day or month) is spent: retrying soon cannot help."""

    type = code = "insufficient_quota"


class Internal(AgentdError):
    status, type, code = 500, "server_error", "internal_error"


class UpstreamError(AgentdError):
    status, type, code = 502, "server_error", "upstream_error"


class Unavailable(AgentdError):
    status, type, code = 503, "server_error", "unavailable"


class Overloaded(Unavailable):
    code = "overloaded"


class StoreUnavailable(Unavailable):
    code = "store_unavailable"


class StoreFull(Unavailable):
    """Redis refused a write at its ``maxmemory`` (OOM under ``noeviction``): nothing was
    written; reads go on."""

    code = "store_full"


class StoreNotDurable(Unavailable):
    """A write the Redis master applied but fewer replicas than ``redis.wait_replicas``
    confirmed in time: it is not undone, and not acknowledged as durable either."""

    code = "store_not_durable"


class UpstreamRejected(BadRequest):
    """The upstream refused the request itself (its 400/404/422): retrying cannot help."""

    code = "upstream_rejected"


class UpstreamAuth(UpstreamError):
    """The upstream refused our credentials (401/403): a configuration problem."""

    code = "upstream_auth"


class UpstreamTimeout(AgentdError):
    status, type, code = 504, "server_error", "upstream_timeout"


# -- request field errors, one shape for the chat and the Responses API ------------------

_KIND_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}


def param_error(message: str, code: str, param: str | None) -> BadRequest:
    """A 400 about one request field: ``param`` names it in the body
    (``{"error": {"message", "type", "code", "param"}}``), as OpenAI's errors do."""
    return BadRequest(message, code=code, detail={"param": param})


def _field_name(key: str) -> str:
    # A client's field name as echoed in an error: bounded, whatever the client sent.
    return key if len(key) <= 64 else key[:64] + "..."


def unknown_parameter(key: str, where: str | None = None) -> BadRequest:
    """The error for a field no table lists (``where``: the object holding it, e.g.
    ``messages[0]``): code ``unknown_parameter``, ``param`` its path."""
    name = _field_name(key)
    if where is None:
        return param_error(f"unknown parameter {name!r}", "unknown_parameter", name)
    return param_error(
        f"unknown parameter {name!r} in {where}", "unknown_parameter", f"{where}.{name}"
    )


def invalid_type(param: str, kinds: tuple[type, ...]) -> BadRequest:
    """The error for a field whose JSON type is not one of ``kinds``: ``invalid_type``."""
    names = " or ".join(_KIND_NAMES[k] for k in kinds if not (k is int and float in kinds))
    return param_error(f"{param} must be {names}", "invalid_type", param)
