"""OpenAI's Conversations API over agentd's sessions: ``/v1/conversations`` (create,
retrieve, update, delete) and its ``items`` (list, add, retrieve, delete).

A conversation is a session seen through OpenAI's shapes (:mod:`agentd.wire.conversations`):
a message added through one API is read through the other, and
``responses.create(conversation=...)`` runs its turn in the session. Lists page as
OpenAI's do: ``limit`` (1-100, default 20), ``order`` (``desc`` by default), ``after``
an item id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from ..errors import BadRequest, NotFound
from ..schema import session_of_conversation
from ..store import SessionInfo, Store
from ..wire.conversations import (
    conversation_object,
    deleted_object,
    item_list,
    message_item,
    parse_create_body,
    parse_items_body,
    parse_update_body,
    seq_of_item,
)
from .auth import identity_of
from .http import json_response, parse_int
from .tenancy import store_of

__all__ = ("ItemPage", "setup")

T = TypeVar("T")

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


class ItemPage:
    """A list request's ``limit``, ``order`` and ``after`` (an item id, unchecked)."""

    __slots__ = ("after", "ascending", "limit")

    def __init__(self, request: web.Request) -> None:
        text = request.query.get("limit")
        self.limit = DEFAULT_LIMIT if text is None else parse_int(text, "limit", MAX_LIMIT)
        if self.limit < 1:
            raise BadRequest(
                f"limit must be from 1 to {MAX_LIMIT}",
                code="invalid_range",
                detail={"param": "limit"},
            )
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise BadRequest(
                'order must be "asc" or "desc"', code="invalid_value", detail={"param": "order"}
            )
        self.ascending = order == "asc"
        self.after = request.query.get("after")


def _session(request: web.Request) -> str:
    conversation = request.match_info["id"]
    sid = session_of_conversation(conversation)
    if sid is None:
        raise _no_conversation(conversation)
    try:
        identity_of(request).check_session(sid)
    except NotFound:
        raise _no_conversation(conversation) from None  # as a missing one answers
    return sid


def _no_conversation(conversation: str) -> NotFound:
    return NotFound(f"no conversation {conversation[:140]!r}", code="conversation_not_found")


async def _in(request: web.Request, step: Awaitable[T]) -> T:
    """``step`` on the request's conversation: its missing session is a missing
    conversation."""
    try:
        return await step
    except NotFound as exc:
        if exc.code != "session_not_found":
            raise
        raise _no_conversation(request.match_info["id"]) from None


def _object(info: SessionInfo) -> web.Response:
    return json_response(conversation_object(info.id, info.created_at, info.metadata))


async def create(request: web.Request) -> web.Response:
    messages, metadata = parse_create_body(await request.read())
    identity_of(request).check_new_session()
    store = store_of(request)
    info = await store.create_session(metadata=metadata)
    if messages:
        try:
            await store.append(info.id, messages)
        except BaseException:
            with contextlib.suppress(Exception):
                await store.delete_session(info.id)  # no half-made conversation
            raise
    return _object(info)


async def retrieve(request: web.Request) -> web.Response:
    return _object(await _in(request, store_of(request).get_session(_session(request))))


async def update(request: web.Request) -> web.Response:
    metadata = parse_update_body(await request.read())
    store = store_of(request)
    return _object(await _in(request, store.update_session(_session(request), metadata=metadata)))


async def delete(request: web.Request) -> web.Response:
    await _in(request, store_of(request).delete_session(_session(request)))
    return json_response(deleted_object(request.match_info["id"]))


def _after_seq(page: ItemPage) -> int | None:
    if page.after is None:
        return None
    seq = seq_of_item(page.after)
    if seq is None:
        raise BadRequest(
            "after must be an item id of this conversation",
            code="invalid_value",
            detail={"param": "after"},
        )
    return seq


async def _page(store: Store, sid: str, page: ItemPage) -> tuple[list[dict[str, Any]], bool]:
    """The page's messages in its order, and whether more follow: one history read of
    one message more than the page."""
    after = _after_seq(page)
    n = page.limit + 1
    if page.ascending:
        rows = await store.history(sid, limit=n, after=after or 0)
    else:
        rows = (await store.history(sid, limit=n, before=after))[::-1]
    return rows[: page.limit], len(rows) > page.limit


async def list_items(request: web.Request) -> web.Response:
    page = ItemPage(request)
    _after_seq(page)  # a bad cursor is a 400 before the conversation is looked up
    rows, more = await _in(request, _page(store_of(request), _session(request), page))
    return json_response(item_list([message_item(m) for m in rows], more))


async def add_items(request: web.Request) -> web.Response:
    messages = parse_items_body(await request.read())
    stored = await _in(request, store_of(request).append(_session(request), messages))
    return json_response(item_list([message_item(m) for m in stored], False))


def _item_seq(request: web.Request) -> int:
    seq = seq_of_item(request.match_info["item"])
    if seq is None:
        raise _no_item(request)
    return seq


def _no_item(request: web.Request) -> NotFound:
    return NotFound(f"no item {request.match_info['item'][:140]!r}", code="item_not_found")


async def get_item(request: web.Request) -> web.Response:
    seq, sid = _item_seq(request), _session(request)
    rows = await _in(request, store_of(request).history(sid, limit=1, after=seq - 1))
    if not rows or rows[0]["seq"] != seq:
        raise _no_item(request)
    return json_response(message_item(rows[0]))


async def delete_item(request: web.Request) -> web.Response:
    seq, sid = _item_seq(request), _session(request)
    store = store_of(request)
    if not await _in(request, store.delete_message(sid, seq)):
        raise _no_item(request)
    # OpenAI answers with the conversation.
    return _object(await _in(request, store.get_session(sid)))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/conversations", create)
    app.router.add_get("/v1/conversations/{id}", retrieve)
    app.router.add_post("/v1/conversations/{id}", update)
    app.router.add_delete("/v1/conversations/{id}", delete)
    app.router.add_get("/v1/conversations/{id}/items", list_items)
    app.router.add_post("/v1/conversations/{id}/items", add_items)
    app.router.add_get("/v1/conversations/{id}/items/{item}", get_item)
    app.router.add_delete("/v1/conversations/{id}/items/{item}", delete_item)
