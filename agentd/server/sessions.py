"""Sessions over HTTP: create, read and delete a session, and page through its history.

``GET /v1/sessions/{id}/messages`` returns messages oldest first, each with its ``seq``:

* without ``after``, the latest ``limit`` messages (what a client shows first);
* with ``after=SEQ``, the first ``limit`` messages whose seq is greater than ``SEQ``.

``has_more`` is exact: the store is asked for one message more than ``limit``, in the
same single read, so it is true exactly when the query matched more messages than the
page holds — older ones before the page without ``after``, newer ones after it with
``after``. To read a whole history, start at ``after=0`` and continue with
``after=<last seq>`` while ``has_more``.

``GET /v1/sessions?limit=N&after=CURSOR`` lists live sessions, the most recently written
to first (created, appended to, a turn stored), ``limit`` (default 100, at most 1000) a
page; ``next_after`` (null on the last page) is the cursor of the next page. With
``agent=NAME``, only that agent's sessions, in the same order, from that agent's own
index (a page costs what the agent's sessions cost, not the tenant's).

``POST /v1/sessions/{id}/messages`` with ``{"messages": [...]}`` appends messages (as
an agent or a tool posting into a shared session does) and publishes them to every
watcher; it answers 201 with the stored messages and their ``seq``.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest
from ..schema import MAX_SEQ, validate_name, validate_session_id
from .auth import identity_of
from .http import json_object, json_response, query_int, read_json
from .tenancy import store_of

__all__ = ("setup",)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Messages one append may carry.
MAX_APPEND = 100
_SESSION_FIELDS = frozenset({"id", "agent", "metadata"})


async def create_session(request: web.Request) -> web.Response:
    """Create a session; the body ``{"id"?, "agent"?, "metadata"?}`` may be empty."""
    raw = await request.read()  # read once: read_json gets the cached bytes
    body = json_object(await read_json(request), _SESSION_FIELDS) if raw else {}
    agent = body.get("agent")
    if agent is not None:
        validate_name("agent", agent)
        identity_of(request).check_agent(agent)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequest("metadata must be a JSON object", code="invalid_request")
    if body.get("id") is not None:
        identity_of(request).check_session(validate_session_id(body["id"]))
    else:
        identity_of(request).check_new_session()
    # The session is the caller's tenant's (the view records it in SessionInfo.tenant).
    info = await store_of(request).create_session(
        body.get("id"),
        agent=agent,
        metadata=metadata,
    )
    return json_response(
        info.to_dict(), status=201, headers={"Location": f"/v1/sessions/{info.id}"}
    )


async def list_sessions(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", MAX_LIMIT)
    agent = request.query.get("agent")
    if agent is not None:
        validate_name("agent", agent)
        identity_of(request).check_agent(agent)
    page = await store_of(request).list_sessions(
        limit=DEFAULT_LIMIT if limit is None else limit,
        after=request.query.get("after"),
        agent=agent,
    )
    allowed = identity_of(request).sessions  # a token narrowed to sessions sees those only
    return json_response(
        {
            "object": "list",
            "data": [s.to_dict() for s in page.sessions if allowed is None or s.id in allowed],
            "has_more": page.next_after is not None,
            "next_after": page.next_after,
        }
    )


def _sid(request: web.Request) -> str:
    """The path's session id, if the caller may use it (else 404, as for no session)."""
    sid = validate_session_id(request.match_info["id"])
    identity_of(request).check_session(sid)
    return sid


async def get_session(request: web.Request) -> web.Response:
    info = await store_of(request).get_session(_sid(request))
    return json_response(info.to_dict())


async def delete_session(request: web.Request) -> web.Response:
    await store_of(request).delete_session(_sid(request))
    return web.Response(status=204)


async def list_messages(request: web.Request) -> web.Response:
    """A page of the session's history; see the module docstring for ``has_more``."""
    limit = query_int(request, "limit", MAX_LIMIT)
    limit = DEFAULT_LIMIT if limit is None else limit
    after = query_int(request, "after", MAX_SEQ)
    rows = await store_of(request).history(_sid(request), limit=limit + 1, after=after)
    has_more = len(rows) > limit
    if has_more:
        # One row too many: past the page's end with ``after``, before its start without.
        rows = rows[:limit] if after is not None else rows[1:]
    return json_response({"object": "list", "data": rows, "has_more": has_more})


async def append_messages(request: web.Request) -> web.Response:
    body = json_object(await read_json(request), frozenset({"messages"}))
    messages = body.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_APPEND:
        raise BadRequest(
            f"messages must be a list of 1 to {MAX_APPEND} messages", code="invalid_message"
        )
    stored = await store_of(request).append(_sid(request), messages)
    return json_response({"object": "list", "data": stored}, status=201)


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/sessions", create_session)
    app.router.add_get("/v1/sessions", list_sessions)
    app.router.add_get("/v1/sessions/{id}", get_session)
    app.router.add_delete("/v1/sessions/{id}", delete_session)
    app.router.add_get("/v1/sessions/{id}/messages", list_messages)
    app.router.add_post("/v1/sessions/{id}/messages", append_messages)
