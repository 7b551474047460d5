"""Response helpers shared by every route: JSON bodies and the error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from ..client_json import loads_json
from ..errors import AgentdError, BadRequest, NotFound, PayloadTooLarge
from ..fastpath import MAX_DEPTH
from ..wire import sse

__all__ = (
    "MAX_DEPTH",
    "client_gone",
    "error_response",
    "from_http_exception",
    "json_object",
    "json_response",
    "loads_json",
    "pump_sse",
    "query_int",
    "read_json",
    "start_sse",
)

# An idle event stream gets a comment line this often (proxies close silent ones).
HEARTBEAT_S = 15.0
# How often an idle event stream looks whether its client is still connected: aiohttp
# does not cancel a handler whose client left, and an idle stream writes nothing that
# would fail, so its watcher would outlive the client until the next comment line.
CLIENT_CHECK_S = 1.0
PING = sse.comment(b"ping")

JSON = "application/json"
T = TypeVar("T")


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialized with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type=JSON)


async def start_sse(
    request: web.Request, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Start a Server-Sent Events response (unbuffered by proxies such as nginx)."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        }
    )
    await response.prepare(request)
    return response


def client_gone(request: web.BaseRequest) -> bool:
    """Whether the client's connection is closed (or closing)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def pump_sse(
    request: web.Request,
    response: web.StreamResponse,
    events: AsyncIterator[T],
    frame: Callable[[T], bytes],
    closing: asyncio.Event,
    last: Callable[[T], bool] | None = None,
) -> None:
    """Write ``frame(event)`` for each event as it comes, and a comment line when the
    stream is idle, until the events end, an event is ``last``, ``closing`` is set (the
    worker drains: the client resumes elsewhere) or the events fail (an ``error`` event
    with the error body ends the stream). Closes the iterator. A client that left ends
    it with ConnectionResetError, as a write would."""
    next_event: asyncio.Future[T] = asyncio.ensure_future(anext(events))
    drain = asyncio.ensure_future(closing.wait())
    loop = asyncio.get_running_loop()
    ping_at = loop.time() + HEARTBEAT_S
    try:
        while True:
            done, _ = await asyncio.wait(
                {next_event, drain}, timeout=CLIENT_CHECK_S, return_when=asyncio.FIRST_COMPLETED
            )
            if drain in done:
                return
            if next_event not in done:
                if client_gone(request):
                    raise ConnectionResetError("the client closed the event stream")
                if loop.time() >= ping_at:
                    await response.write(PING)
                    ping_at = loop.time() + HEARTBEAT_S
                continue
            try:
                event = next_event.result()
            except StopAsyncIteration:
                return
            await response.write(frame(event))
            ping_at = loop.time() + HEARTBEAT_S
            if last is not None and last(event):
                return
            next_event = asyncio.ensure_future(anext(events))
    except AgentdError as exc:
        # The stream's status is sent: the error is its last event (an error response
        # here would be written inside the started body, or nowhere).
        await response.write(sse.frame(orjson.dumps(exc.to_dict()), "error"))
    finally:
        drain.cancel()
        next_event.cancel()
        with contextlib.suppress(BaseException):
            await next_event
        await events.aclose()  # type: ignore[attr-defined]


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


_DIGITS = re.compile(r"[0-9]{1,16}")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON (see :func:`loads_json`).

    A body over ``server.max_request_bytes`` is refused by aiohttp while reading (413).
    """
    return loads_json(await request.read())


def json_object(value: Any, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """``value`` if it is a JSON object (with only ``allowed`` fields), else 400."""
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_request")
    if allowed is not None and (unknown := set(value) - allowed):
        raise BadRequest(f"unknown field(s): {sorted(unknown)}", code="invalid_request")
    return value


def query_int(request: web.Request, name: str, maximum: int) -> int | None:
    """A non-negative integer query parameter (ASCII digits only), None if absent; else
    400 ``invalid_range``."""
    text = request.query.get(name)
    return None if text is None else parse_int(text, name, maximum)


def parse_int(text: str, name: str, maximum: int) -> int:
    """A non-negative integer written in ASCII digits, at most ``maximum``; else 400
    ``invalid_range`` (``int()`` alone takes other scripts' digits, and huge numbers)."""
    if not _DIGITS.fullmatch(text) or int(text) > maximum:
        raise BadRequest(
            f"{name} must be an integer from 0 to {maximum}, got {text[:40]!r}",
            code="invalid_range",
        )
    return int(text)
