"""Errors in the Responses API's shapes: an :class:`AgentdError` as a response record
keeps it, and as the response object's ``error``.

The error body of every HTTP reply (``{"error": {"message", "type", "code", ...}}``) is
:meth:`AgentdError.to_dict`, beside the error types themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import AgentdError

__all__ = ("error_dict", "response_error")

# The SDK's ResponseError.code is a closed set: agentd's codes are rendered as the
# nearest of them, and kept whole in the extension field ``agentd_code``.
_ERROR_CODES = {"rate_limited": "rate_limit_exceeded", "rate_limit_exceeded": "rate_limit_exceeded"}


def error_dict(exc: AgentdError) -> dict[str, Any]:
    """An agentd error as ``ResponseView.error``."""
    return {"code": exc.code, "message": exc.message, "type": exc.type}


def response_error(error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The response object's ``error`` for an :func:`error_dict` (None: no error)."""
    if error is None:
        return None
    code = str(error.get("code") or "server_error")
    return {
        "code": _ERROR_CODES.get(code, "server_error"),
        "message": str(error.get("message") or code),
        "param": error.get("param"),
        "type": error.get("type"),
        "agentd_code": code,
    }
