"""OpenAI's Responses API: ``POST /v1/responses`` (now, streamed, or in the background),
``GET /v1/responses/{id}`` (also its event stream, resumed by sequence number), ``GET
/v1/responses/{id}/input_items``, ``POST /v1/responses/{id}/cancel`` and ``DELETE
/v1/responses/{id}``. The logic is in
:mod:`agentd.jobs.service`, the wire format in :mod:`agentd.wire.responses`; this
module speaks HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp import web

from ..errors import AgentdError, BadRequest, NotFound
from ..jobs.service import Responses, no_conversation
from ..schema import MAX_SEQ, validate_session_id
from ..wire import sse
from ..wire.conversations import item_list
from ..wire.errors import error_dict
from ..wire.responses import (
    ResponseView,
    event_frame,
    input_items,
    parse_create,
    response_object,
)
from .auth import identity_of
from .conversations import ItemPage
from .http import json_response, pump_sse, query_int, start_sse
from .keys import CONFIG, STATE
from .tenancy import responses_of

__all__ = ("setup",)


async def create(request: web.Request) -> web.StreamResponse:
    req = parse_create(await request.read(), request.headers.get("X-Session-Id"))
    identity = identity_of(request)
    identity.check_agent(req.agent)
    responses = responses_of(request)
    if req.session_id is not None:
        responses.agents.get(req.agent)  # an unknown model first, as for a missing session
        try:
            identity.check_session(validate_session_id(req.session_id))
        except NotFound:
            if req.conversation is None:
                raise
            raise no_conversation(req.conversation) from None  # as a missing one answers
    if not req.background:
        # Admission before anything is stored, as for chat turns.
        responses.agents.admission.check(req.agent)
    identity = identity_of(request)
    view = await responses.create(req, payer=identity)
    if req.background:
        if req.stream:
            return await _follow(request, responses, view.id, -1)
        return json_response(response_object(view))
    deadline = asyncio.get_running_loop().time() + request.app[CONFIG].server.turn_timeout
    if not req.stream:
        headers: dict[str, str] = {}
        final = await responses.run_now(
            view, deadline=deadline, identity=identity, on_limits=headers.update
        )
        return json_response(response_object(final), headers=headers)
    return await _stream_now(request, responses, view, deadline)


async def _stream_now(
    request: web.Request, responses: Responses, view: ResponseView, deadline: float
) -> web.StreamResponse:
    """A foreground response as Responses SSE events. Nothing is sent before the turn's
    first event (a delta, or a tool's item), so a turn that fails before it starts is a
    JSON error."""
    events = responses.events_for(view)
    opening = events.opening()  # numbered first, sent with the first event
    stream: web.StreamResponse | None = None
    headers: dict[str, str] = {}  # the caller's x-ratelimit-*, known before any delta

    async def begin() -> web.StreamResponse:
        nonlocal stream
        if stream is None:
            stream = await start_sse(request, headers)
            for event in opening:
                await stream.write(event_frame(event))
        return stream

    async def on_events(batch: list[dict[str, Any]]) -> None:
        response = await begin()
        for event in batch:
            await response.write(event_frame(event))

    try:
        final = await responses.run_now(
            view,
            deadline=deadline,
            events=events,
            on_events=on_events,
            identity=identity_of(request),
            on_limits=headers.update,
        )
    except AgentdError as exc:
        if stream is None:
            raise
        final = dataclasses.replace(view, status="failed", error=error_dict(exc))
    response = await begin()
    for event in events.closing(final):
        await response.write(event_frame(event))
    await response.write_eof()
    return response


async def _follow(
    request: web.Request, responses: Responses, rid: str, after: int
) -> web.StreamResponse:
    """The stored then live events of a background response (which exists), until its
    end."""
    response = await start_sse(request)
    await pump_sse(
        request,
        response,
        responses.follow(rid, after),
        lambda e: sse.frame(e[1], e[0]),
        request.app[STATE].closing,
    )
    await response.write_eof()
    return response


async def retrieve(request: web.Request) -> web.StreamResponse:
    rid = request.match_info["id"]
    responses = responses_of(request)
    if request.query.get("stream") in ("true", "1"):
        view = await responses.get(rid)
        if not view.request.background:
            raise BadRequest(
                "only background responses can be streamed again", code="not_background"
            )
        after = query_int(request, "starting_after", MAX_SEQ)
        return await _follow(request, responses, rid, -1 if after is None else after)
    return json_response(response_object(await responses.get(rid)))


async def list_input_items(request: web.Request) -> web.Response:
    """The response's input items, as OpenAI's ``ResponseItemList`` (``after`` an item
    id, ``limit``, ``order``; ``include`` is accepted and has nothing to add)."""
    page = ItemPage(request)
    view = await responses_of(request).get(request.match_info["id"])
    items = input_items(view.id, view.request.messages)
    if not page.ascending:
        items.reverse()
    if page.after is not None:
        ids = [item["id"] for item in items]
        if page.after not in ids:
            raise BadRequest(
                "after must be an item id of this response",
                code="invalid_value",
                detail={"param": "after"},
            )
        items = items[ids.index(page.after) + 1 :]
    return json_response(item_list(items[: page.limit], len(items) > page.limit))


async def cancel(request: web.Request) -> web.Response:
    view = await responses_of(request).cancel(request.match_info["id"])
    return json_response(response_object(view))


async def delete(request: web.Request) -> web.Response:
    rid = request.match_info["id"]
    await responses_of(request).delete(rid)
    return json_response({"id": rid, "object": "response.deleted", "deleted": True})


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses/{id}", retrieve)
    app.router.add_get("/v1/responses/{id}/input_items", list_input_items)
    app.router.add_post("/v1/responses/{id}/cancel", cancel)
    app.router.add_delete("/v1/responses/{id}", delete)
