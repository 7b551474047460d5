"""Session events over HTTP: watch a session as Server-Sent Events, publish custom events.

``GET /v1/sessions/{id}/events`` streams every message added to the session (by any
connection, on any instance) as ``messages`` events whose SSE ``id`` is the last seq,
and custom events under their own name. Resume with ``?after=SEQ`` or the standard
``Last-Event-ID`` header: every stored message after that seq comes first, then live
events, with no gap and no duplicate. A comment line every 15 s keeps proxies from
closing an idle stream. The stream ends when the session is deleted (``deleted``) or
the worker drains (the client reconnects elsewhere with ``Last-Event-ID``).

``POST /v1/sessions/{id}/events`` with ``{"type": NAME, "data": {...}}`` publishes a
custom event (``typing``, ``tool_progress``, ...) to every watcher; it is not stored.
"""

from __future__ import annotations

import re

import orjson
from aiohttp import web

from ..errors import BadRequest
from ..schema import MAX_SEQ, validate_session_id
from ..store import Event
from ..wire import sse
from .auth import identity_of
from .http import json_object, json_response, parse_int, pump_sse, read_json, start_sse
from .keys import STATE
from .tenancy import store_of

__all__ = ("setup",)

EVENT_NAME_RE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
RESERVED = frozenset({"messages", "deleted"})


def _after(request: web.Request) -> int | None:
    """The seq to resume after: the ``after`` query parameter, else ``Last-Event-ID``."""
    name, raw = "after", request.query.get("after")
    if raw is None:
        name, raw = "Last-Event-ID", request.headers.get("Last-Event-ID")
    if raw is None or raw == "":
        return None
    return parse_int(raw, name, MAX_SEQ)


def session_frame(event: Event) -> bytes:
    """One SSE frame; a ``messages`` frame's id is its last seq, for Last-Event-ID."""
    if event.kind == "messages":
        messages = orjson.dumps({"session_id": event.session_id, "messages": event.messages})
        return sse.frame(messages, "messages", event.messages[-1]["seq"])
    return sse.frame(orjson.dumps({"session_id": event.session_id, "data": event.data}), event.kind)


async def watch(request: web.Request) -> web.StreamResponse:
    sid = request.match_info["id"]
    after = _after(request)
    identity_of(request).check_session(validate_session_id(sid))
    store = store_of(request)
    await store.get_session(sid)  # 404 as JSON before the stream starts
    # Subscribed before the response starts: a store failure is still a JSON 503.
    events = await store.open_watch(sid, after)
    try:
        response = await start_sse(request)
        await response.write(sse.comment(b"watching " + sid.encode()))
    except BaseException:
        await events.aclose()
        raise
    closing = request.app[STATE].closing
    await pump_sse(request, response, events, session_frame, closing, lambda e: e.kind == "deleted")
    return response


async def publish(request: web.Request) -> web.Response:
    sid = request.match_info["id"]
    body = json_object(await read_json(request), frozenset({"type", "data"}))
    kind, data = body.get("type"), body.get("data", {})
    if not isinstance(kind, str) or not EVENT_NAME_RE.fullmatch(kind) or kind in RESERVED:
        raise BadRequest(
            "type must match [a-z][a-z0-9_.]{0,63} and not be messages or deleted",
            code="invalid_event",
        )
    if not isinstance(data, dict):
        raise BadRequest("data must be an object", code="invalid_event")
    identity_of(request).check_session(validate_session_id(sid))
    store = store_of(request)
    await store.get_session(sid)
    await store.publish(sid, kind, data)
    return json_response({"published": True}, status=202)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/sessions/{id}/events", watch)
    app.router.add_post("/v1/sessions/{id}/events", publish)
