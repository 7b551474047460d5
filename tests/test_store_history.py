"""A session's history on every store topology: appends, ranges, caps, message checks and
concurrent appends, through :class:`agentd.store.Store` only."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agentd.config import Config
from agentd.errors import BadRequest, NotFound, PayloadTooLarge
from agentd.store import Store

from .store_helpers import (
    fails,
    new_session,
    seqs,
    store_with,
    typed,
    user,
)


async def test_append_assigns_contiguous_seqs_from_one(store: Store) -> None:
    sid = await new_session(store)
    before = time.time()
    first = await store.append(sid, [user("a"), {"role": "assistant", "content": "b"}])
    second = await store.append(sid, [user("c")])
    after = time.time()
    assert seqs(first) == [1, 2]
    assert seqs(second) == [3]
    assert [(m["role"], m["content"]) for m in first + second] == [
        ("user", "a"),
        ("assistant", "b"),
        ("user", "c"),
    ]
    for message in first + second:
        assert isinstance(message["created_at"], float)
        assert before <= message["created_at"] <= after


async def test_history_is_oldest_first_and_matches_append(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user(f"m{i}") for i in range(1, 4)])
    appended += await store.append(sid, [user("m4")])
    assert await store.history(sid) == appended


async def test_history_limit_returns_the_last_messages(store: Store) -> None:
    sid = await new_session(store, *(f"m{i}" for i in range(1, 11)))
    last3 = await store.history(sid, limit=3)
    assert seqs(last3) == [8, 9, 10]
    assert [m["content"] for m in last3] == ["m8", "m9", "m10"]
    assert seqs(await store.history(sid, limit=1)) == [10]
    assert await store.history(sid, limit=0) == []
    for limit in (10, 11, 15, 19, 20, 50):  # at least everything: all of it
        assert seqs(await store.history(sid, limit=limit)) == list(range(1, 11)), limit


async def test_history_after_returns_everything_later(store: Store) -> None:
    sid = await new_session(store, *(f"m{i}" for i in range(1, 11)))
    assert seqs(await store.history(sid, after=0)) == list(range(1, 11))
    assert seqs(await store.history(sid, after=7)) == [8, 9, 10]
    assert [m["content"] for m in await store.history(sid, after=9)] == ["m10"]
    assert await store.history(sid, after=10) == []
    assert await store.history(sid, after=99) == []


async def test_history_after_with_limit_returns_the_first_ones_after(store: Store) -> None:
    sid = await new_session(store, *(f"m{i}" for i in range(1, 11)))
    assert seqs(await store.history(sid, after=2, limit=3)) == [3, 4, 5]
    assert seqs(await store.history(sid, after=8, limit=5)) == [9, 10]
    assert seqs(await store.history(sid, after=0, limit=1)) == [1]
    assert await store.history(sid, after=4, limit=0) == []


async def test_history_of_empty_session_is_empty(store: Store) -> None:
    sid = await new_session(store)
    assert await store.history(sid) == []
    assert await store.history(sid, limit=5) == []
    assert await store.history(sid, after=0) == []


async def test_history_refuses_negative_range(store: Store) -> None:
    sid = await new_session(store, "a")
    await fails(store.history(sid, limit=-1), BadRequest, "invalid_range")
    await fails(store.history(sid, after=-1), BadRequest, "invalid_range")


async def test_load_returns_info_and_last_messages(store: Store) -> None:
    sid = (await store.create_session(tenant="t", agent="a", metadata={"m": 1})).id
    appended = await store.append(sid, [user(f"m{i}") for i in range(1, 8)])
    info, messages = await store.load(sid, 3)
    assert (info.id, info.tenant, info.agent, info.metadata) == (sid, "t", "a", {"m": 1})
    assert info.last_seq == 7
    assert messages == appended[-3:]
    for last in (7, 8, 10, 13, 100):
        assert (await store.load(sid, last))[1] == appended, last
    info0, none = await store.load(sid, 0)
    assert (info0.last_seq, none) == (7, [])


async def test_load_of_empty_session(store: Store) -> None:
    sid = await new_session(store)
    info, messages = await store.load(sid, 10)
    assert (info.last_seq, messages) == (0, [])


async def test_history_is_capped_but_seq_keeps_increasing(store_config: Config) -> None:
    async with store_with(store_config, sessions={"max_messages": 5}) as capped:
        sid = await new_session(capped)
        for i in range(1, 9):
            (stored,) = await capped.append(sid, [user(f"m{i}")])
            assert stored["seq"] == i
        history = await capped.history(sid)
        assert seqs(history) == [4, 5, 6, 7, 8]
        assert [m["content"] for m in history] == ["m4", "m5", "m6", "m7", "m8"]
        assert seqs(await capped.history(sid, after=0)) == [4, 5, 6, 7, 8]
        assert seqs(await capped.history(sid, after=6)) == [7, 8]
        info, loaded = await capped.load(sid, 10)
        assert (info.last_seq, seqs(loaded)) == (8, [4, 5, 6, 7, 8])
        assert (await capped.get_session(sid)).last_seq == 8
        assert seqs(await capped.append(sid, [user("m9")])) == [9]
        assert seqs(await capped.history(sid)) == [5, 6, 7, 8, 9]


async def test_one_append_larger_than_the_cap_keeps_the_newest(store_config: Config) -> None:
    async with store_with(store_config, sessions={"max_messages": 5}) as capped:
        sid = await new_session(capped)
        stored = await capped.append(sid, [user(f"m{i}") for i in range(1, 8)])
        assert seqs(stored) == list(range(1, 8))
        assert seqs(await capped.history(sid)) == [3, 4, 5, 6, 7]
        assert (await capped.get_session(sid)).last_seq == 7


INVALID_MESSAGES: list[Any] = [
    {"role": "robot", "content": "hi"},
    {"content": "no role"},
    {"role": None, "content": "null role"},
    {"role": [], "content": "list role"},  # unhashable: once a 500
    {"role": {"a": 1}, "content": "object role"},
    {"role": "user", "content": "x", "extra": 1},
    {"role": "user", "content": "x", "seq": 5},
    "just a string",
    ["user", "hi"],
    42,
    None,
]


@pytest.mark.parametrize("bad", INVALID_MESSAGES, ids=repr)
async def test_invalid_message_is_refused_and_nothing_is_stored(store: Store, bad: Any) -> None:
    sid = await new_session(store, "before")
    error = await fails(store.append(sid, [user("ok"), bad]), BadRequest, "invalid_message")
    assert error.status == 400
    assert seqs(await store.history(sid)) == [1]
    assert seqs(await store.append(sid, [user("after")])) == [2]


async def test_empty_append_is_refused(store: Store) -> None:
    sid = await new_session(store)
    await fails(store.append(sid, []), BadRequest, "invalid_message")
    assert (await store.get_session(sid)).last_seq == 0


async def test_message_larger_than_limit_is_refused(store: Store) -> None:
    limit = store.config.sessions.max_message_bytes
    sid = await new_session(store, "before")
    huge = user("x" * limit)
    error = await fails(store.append(sid, [huge]), PayloadTooLarge, "message_too_large")
    assert error.status == 413
    assert seqs(await store.history(sid)) == [1]
    fits = user("y" * (limit // 2))
    (stored,) = await store.append(sid, [fits])
    assert (await store.history(sid, after=1))[0]["content"] == fits["content"]
    assert stored["seq"] == 2


async def test_append_to_unknown_session_is_not_found(store: Store) -> None:
    await fails(store.append("missing", [user("x")]), NotFound, "session_not_found")
    await fails(store.get_session("missing"), NotFound, "session_not_found")


async def test_optional_message_fields_round_trip(store: Store) -> None:
    sid = await new_session(store)
    tool_calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": "ü", "n": [1, 2]}'},
        }
    ]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "dev note"},
        {"role": "user", "name": "alice", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": tool_calls},
        {"role": "tool", "tool_call_id": "call_1", "name": "lookup", "content": "42"},
        {"role": "assistant", "content": "done", "status": "completed"},
    ]
    stored = await store.append(sid, messages)
    history = await store.history(sid)
    assert history == stored
    assert history[2]["name"] == "alice"
    assert typed(history[3]["tool_calls"]) == typed(tool_calls)
    assert (history[4]["tool_call_id"], history[4]["name"]) == ("call_1", "lookup")
    assert history[5]["status"] == "completed"
    for sent, got in zip(messages, history, strict=True):
        assert {k: v for k, v in sent.items() if v is not None}.items() <= got.items()


async def test_unicode_content_round_trips(store: Store) -> None:
    texts = [
        "héllo wörld",
        "日本語のテキスト",
        "emoji 🚀🔥 and ZWJ 👩‍💻",
        "rtl مرحبا",
        "\u2028\t\"'\\",
    ]
    sid = await new_session(store)
    await store.append(sid, [user(t) for t in texts])
    assert [m["content"] for m in await store.history(sid)] == texts
    _, loaded = await store.load(sid, len(texts))
    assert [m["content"] for m in loaded] == texts


async def test_structured_content_round_trips(store: Store) -> None:
    content = [
        {"type": "text", "text": "look", "annotations": [], "extra": {}},
        {"type": "image_url", "image_url": {"url": "x", "detail": None}, "n": 2**60 + 1},
    ]
    sid = await new_session(store)
    await store.append(sid, [{"role": "user", "content": content}, {"role": "user", "content": []}])
    history = await store.history(sid)
    assert typed(history[0]["content"]) == typed(content)
    assert typed(history[1]["content"]) == typed([])


# -- concurrent appends ---------------------------------------------------------------


async def test_concurrent_appends_get_every_seq_exactly_once(store: Store) -> None:
    sid = await new_session(store)
    results = await asyncio.gather(*(store.append(sid, [user(f"w{i}")]) for i in range(20)))
    assert sorted(m["seq"] for r in results for m in r) == list(range(1, 21))
    by_seq = {r[0]["seq"]: r[0]["content"] for r in results}
    history = await store.history(sid)
    assert seqs(history) == list(range(1, 21))
    assert {m["seq"]: m["content"] for m in history} == by_seq
    assert {m["content"] for m in history} == {f"w{i}" for i in range(20)}
    assert (await store.get_session(sid)).last_seq == 20


async def test_concurrent_batch_appends_stay_contiguous(store: Store) -> None:
    sid = await new_session(store)
    results = await asyncio.gather(
        *(store.append(sid, [user(f"b{i}-{j}") for j in range(3)]) for i in range(10))
    )
    for batch in results:
        first = batch[0]["seq"]
        assert seqs(batch) == [first, first + 1, first + 2]
    assert sorted(m["seq"] for r in results for m in r) == list(range(1, 31))
    assert await store.history(sid) == sorted(
        (m for r in results for m in r), key=lambda m: m["seq"]
    )
