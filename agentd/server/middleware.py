"""The middleware every request passes: error mapping and request metrics, in one frame."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import AgentdError, Internal
from .http import error_response, from_http_exception
from .keys import METRICS

__all__ = ("observe",)

log = logging.getLogger(__name__)


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
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error_response(Internal("internal server error"))
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    request.app[METRICS].observe_request(
        route, request.method, response.status, time.perf_counter() - start
    )
    return response
