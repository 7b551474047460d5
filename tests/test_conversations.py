"""OpenAI's Conversations API over agentd's sessions, driven by the official ``openai``
SDK on the memory store and on a real Redis; every body is checked against the SDK's own
types, strictly (``tests/sdk_strict.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.conversations import (
    Conversation,
    ConversationDeletedResource,
    ConversationItem,
    ConversationItemList,
)
from openai.types.responses import Response

from agentd.errors import BadRequest, NotFound
from agentd.store import Store

from .procs import RedisServer
from .sdk_strict import strictly
from .store_helpers import fails, new_session, seqs, user
from .waiting import wait_until


@pytest.fixture(params=["memory", "redis"])
async def sdk(
    request: pytest.FixtureRequest, serve: Callable[..., Awaitable[str]]
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK's client on an app whose store is in memory, or on a real Redis."""
    if request.param == "memory":
        url = await serve()
    else:
        server: RedisServer = request.getfixturevalue("redis_standalone")
        url = await serve(redis={"urls": [server.url]})
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    yield client
    await client.close()


async def checked(kind: Any, call: Awaitable[Any]) -> Any:
    """The parsed answer of a ``with_raw_response`` call whose body is strictly ``kind``."""
    raw = await call
    strictly(kind, raw.content)
    return raw.parse()


def base(sdk: openai.AsyncOpenAI) -> str:
    return str(sdk.base_url).rstrip("/")


async def test_a_conversation_from_create_to_delete(sdk: openai.AsyncOpenAI) -> None:
    raw = sdk.conversations.with_raw_response
    conv = await checked(
        Conversation,
        raw.create(
            items=[
                {"type": "message", "role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
            ],
            metadata={"topic": "greetings"},
        ),
    )
    assert conv.id.startswith("conv_") and conv.metadata == {"topic": "greetings"}
    got = await checked(Conversation, raw.retrieve(conv.id))
    assert got.id == conv.id and got.created_at == conv.created_at
    updated = await checked(Conversation, raw.update(conv.id, metadata={"topic": "other"}))
    assert updated.metadata == {"topic": "other"}

    items = sdk.conversations.items.with_raw_response
    listed = await checked(ConversationItemList, items.list(conv.id))
    assert [(i.role, i.content[0].text) for i in listed.data] == [
        ("assistant", "hello"),
        ("user", "hi"),
    ]  # newest first, as OpenAI's default
    assert listed.data[0].content[0].type == "output_text"
    assert listed.first_id == listed.data[0].id and listed.has_more is False
    added = await checked(
        ConversationItemList,
        items.create(conv.id, items=[{"role": "user", "content": "again"}]),
    )
    assert [i.content[0].text for i in added.data] == ["again"]
    one = await checked(ConversationItem, items.retrieve(added.data[0].id, conversation_id=conv.id))
    assert one.id == added.data[0].id and one.role == "user"
    after = await checked(Conversation, items.delete(listed.data[1].id, conversation_id=conv.id))
    assert after.id == conv.id
    left = await sdk.conversations.items.list(conv.id, order="asc")
    assert [i.content[0].text for i in left.data] == ["hello", "again"]
    with pytest.raises(openai.NotFoundError) as e:
        await sdk.conversations.items.retrieve(listed.data[1].id, conversation_id=conv.id)
    assert e.value.code == "item_not_found"

    gone = await checked(ConversationDeletedResource, raw.delete(conv.id))
    assert gone.deleted is True and gone.id == conv.id
    with pytest.raises(openai.NotFoundError) as e:
        await sdk.conversations.retrieve(conv.id)
    assert e.value.code == "conversation_not_found"


async def test_sessions_and_conversations_are_the_same_objects(sdk: openai.AsyncOpenAI) -> None:
    url = base(sdk)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/sessions", json={"metadata": {"k": "v"}}) as r:
            sid = (await r.json())["id"]
        async with http.post(
            f"{url}/sessions/{sid}/messages", json={"messages": [user("from sessions")]}
        ) as r:
            assert r.status == 201
        conv = await sdk.conversations.retrieve(f"conv_{sid}")
        assert conv.metadata == {"k": "v"}
        await sdk.conversations.items.create(
            conv.id, items=[{"role": "user", "content": "from conversations"}]
        )
        async with http.get(f"{url}/sessions/{sid}/messages") as r:
            texts = [m["content"] for m in (await r.json())["data"]]
        assert texts == ["from sessions", "from conversations"]
        made = await sdk.conversations.create()
        async with http.get(f"{url}/sessions/{made.id.removeprefix('conv_')}") as r:
            assert r.status == 200


async def test_responses_run_in_a_conversation(sdk: openai.AsyncOpenAI) -> None:
    conv = await sdk.conversations.create()
    raw = await sdk.responses.with_raw_response.create(
        model="echo", input="first words", conversation=conv.id
    )
    body = orjson.loads(raw.content)
    # agentd's session_id extension is not the SDK's; the rest is checked strictly.
    assert body.pop("session_id") == conv.id.removeprefix("conv_")
    first = strictly(Response, body)
    assert first.conversation is not None and first.conversation.id == conv.id
    assert first.output_text == "first words"
    second = await sdk.responses.create(
        model="echo", input="second words", conversation={"id": conv.id}, background=True
    )
    assert second.conversation is not None and second.conversation.id == conv.id

    async def both_turns_stored() -> list[Any]:
        page = await sdk.conversations.items.list(conv.id, order="asc")
        return page.data if len(page.data) == 4 else []

    items = await wait_until(both_turns_stored, what="the background turn in the conversation")
    assert [(i.role, i.content[0].text) for i in items] == [
        ("user", "first words"),
        ("assistant", "first words"),
        ("user", "second words"),
        ("assistant", "second words"),
    ]
    with pytest.raises(openai.NotFoundError) as e:
        await sdk.responses.create(model="echo", input="x", conversation="conv_nobody")
    assert e.value.code == "conversation_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        await sdk.responses.create(
            model="echo", input="x", conversation=conv.id, previous_response_id=first.id
        )
    assert e.value.param == "conversation"


async def test_items_page_both_ways(sdk: openai.AsyncOpenAI) -> None:
    conv = await sdk.conversations.create(
        items=[{"role": "user", "content": f"m{i}"} for i in range(7)]
    )
    for order, expected in (("asc", [f"m{i}" for i in range(7)]), ("desc", None)):
        texts = [
            item.content[0].text
            async for item in sdk.conversations.items.list(conv.id, limit=2, order=order)
        ]
        assert texts == (expected or [f"m{i}" for i in reversed(range(7))]), order
    page = await sdk.conversations.items.list(conv.id, limit=3)
    assert page.has_more is True and len(page.data) == 3


async def test_bad_requests_get_clear_errors(sdk: openai.AsyncOpenAI) -> None:
    conv = await sdk.conversations.create()
    for bad in ("nobody", "conv_", "conv_a b"):
        with pytest.raises(openai.NotFoundError) as e:
            await sdk.conversations.retrieve(bad)
        assert e.value.code == "conversation_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        await sdk.conversations.items.create(conv.id, items=[{"role": "user", "content": "x"}] * 21)
    assert e.value.code == "invalid_value"
    with pytest.raises(openai.BadRequestError) as e:
        await sdk.conversations.items.create(
            conv.id, items=[{"type": "function_call_output", "call_id": "c", "output": "o"}]
        )
    assert e.value.code == "unsupported_input"
    for item_id in ("msg_0", "item_1", "msg_99"):
        with pytest.raises(openai.NotFoundError) as e:
            await sdk.conversations.items.retrieve(item_id, conversation_id=conv.id)
        assert e.value.code == "item_not_found"
    url = base(sdk)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/conversations", json={"itemz": []}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "unknown_parameter"
        async with http.get(f"{url}/conversations/{conv.id}/items?order=up") as r:
            assert r.status == 400
        async with http.get(f"{url}/conversations/{conv.id}/items?limit=101") as r:
            assert r.status == 400
        async with http.get(f"{url}/conversations/{conv.id}/items?after=zz") as r:
            assert r.status == 400
    assert (await sdk.conversations.retrieve(conv.id)).id == conv.id  # still serving


# -- the store operations behind them, on every topology --------------------------------


async def test_history_before_a_seq(store: Store) -> None:
    sid = await new_session(store, *(f"m{i}" for i in range(6)))
    assert seqs(await store.history(sid, limit=2, before=5)) == [3, 4]
    assert seqs(await store.history(sid, before=3)) == [1, 2]
    assert await store.history(sid, limit=3, before=1) == []
    await fails(store.history(sid, after=1, before=3), BadRequest, "invalid_range")


async def test_update_metadata_and_delete_a_message(store: Store) -> None:
    sid = await new_session(store, "a", "b", "c")
    info = await store.update_session(sid, metadata={"x": "1"})
    assert info.metadata == {"x": "1"} and info.last_seq == 3
    assert (await store.get_session(sid)).metadata == {"x": "1"}
    assert await store.delete_message(sid, 2) is True
    assert await store.delete_message(sid, 2) is False
    assert await store.delete_message(sid, 0) is False
    assert [m["content"] for m in await store.history(sid)] == ["a", "c"]
    assert seqs(await store.history(sid, limit=1, before=3)) == [1]
    assert seqs(await store.append(sid, [user("d")])) == [4]  # seqs are never reused
    await fails(store.update_session("nobody", metadata={}), NotFound, "session_not_found")
    await fails(store.delete_message("nobody", 1), NotFound, "session_not_found")
