"""The middleware every request passes: error mapping and request metrics, in one frame.

A request whose client went away before it was answered (a body cut short, a stream
whose reader closed) is no server error: it is counted with status 499, as nginx does,
and logged at debug. While the worker is leaving or draining, every answer closes its
connection and says so (``Connection: close``), streams included (:func:`close_when_draining`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import ClientPayloadError, hdrs, web
from aiohttp.http_exceptions import PayloadEncodingError
from aiohttp.typedefs import Handler

from ..errors import AgentdError, Internal
from .http import client_gone, error_response, from_http_exception
from .keys import METRICS, STATE

__all__ = ("CLIENT_CLOSED", "STOPPED", "close_when_draining", "observe")

log = logging.getLogger(__name__)

# The status counted for a request whose client closed its connection first (nginx's).
CLIENT_CLOSED = 499
# The status counted for a request cancelled while its client still waited (the worker's
# drain ran out of time).
STOPPED = 503
# What a read or a write raises once the client's connection is gone: aiohttp's own
# ClientConnectionResetError is a ConnectionResetError; a body cut off mid-way is a
# ConnectionResetError or, from the parser, a payload error.
_GONE_ERRORS = (ConnectionError, PayloadEncodingError, ClientPayloadError)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    try:
        response = await handler(request)
    except AgentdError as exc:
        response = error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(from_http_exception(exc))
    except asyncio.CancelledError:
        # Counted, then passed on: a cancelled handler must end.
        _count(request, CLIENT_CLOSED if client_gone(request) else STOPPED, start)
        raise
    except Exception as exc:
        if isinstance(exc, _GONE_ERRORS) and client_gone(request):
            log.debug("client went away during %s %s: %r", request.method, request.path, exc)
            response = web.Response(status=CLIENT_CLOSED)
        else:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(Internal("internal server error"))
    if not response.prepared and client_gone(request):
        # Answered after the client left (a turn it did not wait for): nobody reads it.
        log.debug("client went away before %s %s was answered", request.method, request.path)
        response = web.Response(status=CLIENT_CLOSED)
    _count(request, response.status, start)
    return response


def _count(request: web.Request, status: int, start: float) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    request.app[METRICS].observe_request(route, request.method, status, time.perf_counter() - start)


async def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    """Leaving or draining: the connection closes after this answer, and its headers say
    so, so a balancer's pooled connections to this instance end one by one while it still
    serves, instead of being closed under a request sent at that very moment. Run as the
    answer's headers go out (``on_response_prepare``): a stream a handler starts itself
    (SSE, a streamed turn) must say it too, or the balancer pools its connection again
    when it ends and may send the next request just as the drain closes it."""
    if request.app[STATE].draining and not isinstance(response, web.WebSocketResponse):
        response.force_close()
        # aiohttp computed the headers before this hook: the header must be set here.
        response.headers[hdrs.CONNECTION] = "close"
