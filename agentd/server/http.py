"""Response helpers shared by every route: JSON bodies and the error mapping."""

from __future__ import annotations

import orjson
from aiohttp import web

from ..errors import AgentdError, BadRequest, NotFound, PayloadTooLarge

__all__ = ("error_response", "from_http_exception", "json_response")

JSON = "application/json"


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialized with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type=JSON)


def error_response(exc: AgentdError) -> web.Response:
    """The one place an :class:`AgentdError` becomes an HTTP response."""
    headers = None
    if exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    return json_response(exc.to_dict(), status=exc.status, headers=headers)


_CODES = {
    405: "method_not_allowed",
    406: "not_acceptable",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


def from_http_exception(exc: web.HTTPException) -> AgentdError:
    """aiohttp's own HTTP errors (unknown route, body too large…) as agentd errors."""
    status = exc.status
    if status == 404:
        return NotFound("no such route")
    if status == 413:
        return PayloadTooLarge(exc.text or "request body too large")
    if status == 400:
        return BadRequest(exc.reason)
    return AgentdError(exc.reason, code=_CODES.get(status, f"http_{status}"), status=status)
