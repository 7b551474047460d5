"""The store contract: every topology (memory, single Redis, sharded, cluster) must pass.

Sessions, history, concurrency, shared state and events, through the public methods of
:class:`agentd.store.Store` only, so the same tests hold whatever backend runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.config import Config, from_dict
from agentd.errors import AgentdError, BadRequest, Conflict, NotFound, PayloadTooLarge
from agentd.store import Event, StateConflict, StateDoc, Store, open_store
from agentd.store.state import merge_patch

E = TypeVar("E", bound=AgentdError)

# Seconds to wait for one event: a bug fails the test instead of hanging it.
TIMEOUT = 10.0
NS = "team-1"


# -- helpers --------------------------------------------------------------------------


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def seqs(messages: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[int]:
    return [m["seq"] for m in messages]


def typed(value: Any) -> Any:
    """``value`` with every scalar tagged by its type, so 1, 1.0 and True compare unequal."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


async def fails(awaitable: Awaitable[Any], kind: type[E], code: str) -> E:
    """Await ``awaitable``, which must raise exactly ``kind`` with ``code``."""
    with pytest.raises(kind) as info:
        await awaitable
    assert type(info.value) is kind, info.value
    assert info.value.code == code, info.value
    return info.value


async def new_session(store: Store, *messages: str) -> str:
    """A fresh session holding a user message per text."""
    sid = (await store.create_session()).id
    if messages:
        await store.append(sid, [user(t) for t in messages])
    return sid


@contextlib.asynccontextmanager
async def store_with(config: Config, **sections: dict[str, Any]) -> AsyncIterator[Store]:
    """A started store on the same backend as ``config``, with other settings."""
    raw: dict[str, Any] = dict(sections)
    if config.redis.urls:
        raw["redis"] = {"urls": list(config.redis.urls), "cluster": config.redis.cluster}
    instance = open_store(from_dict(raw))
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


async def next_event(gen: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(anext(gen), TIMEOUT)


async def collect_messages(
    gen: AsyncIterator[Event], sid: str, until_seq: int
) -> list[dict[str, Any]]:
    """Every message of ``messages`` events, until one with ``until_seq`` arrived."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["seq"] < until_seq:
        event = await next_event(gen)
        assert event.kind == "messages", event
        assert event.session_id == sid
        assert event.messages, event
        got.extend(event.messages)
    return got


async def assert_nothing_pending(store: Store, sid: str, gen: AsyncIterator[Event]) -> None:
    """No further event is queued for the watcher: a marker published now comes next."""
    await store.publish(sid, "marker", {"n": 1})
    assert await next_event(gen) == Event(sid, "marker", data={"n": 1})


# -- sessions -------------------------------------------------------------------------


async def test_create_generates_unique_prefixed_ids(store: Store) -> None:
    ids = [(await store.create_session()).id for _ in range(20)]
    assert all(i.startswith("s_") for i in ids)
    assert len(set(ids)) == 20
    for sid in ids[:3]:
        assert (await store.get_session(sid)).id == sid


async def test_create_with_client_chosen_id(store: Store) -> None:
    chosen = "Chat-42.v1:alice_b"
    info = await store.create_session(chosen)
    assert info.id == chosen
    assert (await store.get_session(chosen)).id == chosen
    longest = "x" * 128
    assert (await store.create_session(longest)).id == longest


async def test_create_existing_id_conflicts_and_keeps_original(store: Store) -> None:
    await store.create_session("dup", tenant="t1", metadata={"first": True})
    await store.append("dup", [user("kept")])
    error = await fails(store.create_session("dup", tenant="t2"), Conflict, "session_exists")
    assert error.status == 409
    info = await store.get_session("dup")
    assert (info.tenant, info.metadata, info.last_seq) == ("t1", {"first": True}, 1)
    assert seqs(await store.history("dup")) == [1]


async def test_concurrent_creates_of_one_id_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(
        *(store.create_session("race", agent=f"a{i}") for i in range(10)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(e, Conflict) and e.code == "session_exists" for e in losers)
    assert (await store.get_session("race")).agent == winners[0].agent


INVALID_SESSION_IDS: list[Any] = [
    "",
    "x" * 129,
    "a{b}",
    "{tag}",
    "a}",
    "a/b",
    "a b",
    " a",
    "a\n",
    "-leading-dash",
    123,
    b"bytes",
    ["list"],
]


@pytest.mark.parametrize("bad", INVALID_SESSION_IDS, ids=repr)
async def test_invalid_session_ids_are_bad_requests(store: Store, bad: Any) -> None:
    code = "invalid_session_id"
    error = await fails(store.create_session(bad), BadRequest, code)
    assert error.status == 400
    await fails(store.get_session(bad), BadRequest, code)
    await fails(store.delete_session(bad), BadRequest, code)
    await fails(store.append(bad, [user("x")]), BadRequest, code)
    await fails(store.history(bad), BadRequest, code)
    await fails(store.load(bad, 5), BadRequest, code)


async def test_get_returns_what_create_stored(store: Store) -> None:
    before = time.time()
    created = await store.create_session(tenant="acme", agent="helper", metadata={"k": "v"})
    after = time.time()
    info = await store.get_session(created.id)
    assert before <= info.created_at <= after
    assert info.created_at == created.created_at
    assert (info.tenant, info.agent, info.metadata, info.last_seq) == (
        "acme",
        "helper",
        {"k": "v"},
        0,
    )
    bare = await store.get_session((await store.create_session()).id)
    assert (bare.tenant, bare.agent, bare.metadata, bare.last_seq) == (None, None, {}, 0)


async def test_get_reports_last_seq(store: Store) -> None:
    sid = await new_session(store, "a", "b")
    await store.append(sid, [user("c")])
    assert (await store.get_session(sid)).last_seq == 3


async def test_metadata_round_trips_nested_json(store: Store) -> None:
    metadata = {
        "user": {"name": "Zoë 🚀", "tags": ["a", "b"], "scores": [1, 2.5, None]},
        "empty_list": [],
        "empty_obj": {},
        "flag": True,
        "big": 2**60 + 1,
        "ratio": 0.1,
    }
    sid = (await store.create_session(metadata=metadata)).id
    assert typed((await store.get_session(sid)).metadata) == typed(metadata)
    info, _ = await store.load(sid, 1)
    assert typed(info.metadata) == typed(metadata)


async def test_unknown_session_is_not_found(store: Store) -> None:
    error = await fails(store.get_session("nope"), NotFound, "session_not_found")
    assert error.status == 404
    await fails(store.delete_session("nope"), NotFound, "session_not_found")
    await fails(store.history("nope"), NotFound, "session_not_found")
    await fails(store.load("nope", 3), NotFound, "session_not_found")


async def test_deleted_session_is_gone(store: Store) -> None:
    sid = await new_session(store, "a", "b")
    await store.delete_session(sid)
    await fails(store.get_session(sid), NotFound, "session_not_found")
    await fails(store.history(sid), NotFound, "session_not_found")
    await fails(store.append(sid, [user("c")]), NotFound, "session_not_found")
    await fails(store.delete_session(sid), NotFound, "session_not_found")


async def test_recreated_session_starts_empty(store: Store) -> None:
    await store.create_session("again", metadata={"v": 1})
    await store.append("again", [user("old"), user("old")])
    await store.delete_session("again")
    await store.create_session("again", metadata={"v": 2})
    info = await store.get_session("again")
    assert (info.metadata, info.last_seq) == ({"v": 2}, 0)
    assert await store.history("again") == []


# -- history --------------------------------------------------------------------------


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


# -- concurrency ----------------------------------------------------------------------


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


async def test_concurrent_cas_writers_lose_no_update(store: Store) -> None:
    async def writer(i: int) -> StateDoc | None:
        try:
            read = (await store.state_get(NS, "cas")).version
        except NotFound:
            read = 0
        await asyncio.sleep(0)  # let the others read too
        try:
            doc = await store.state_put(NS, "cas", {"writer": i}, expected_version=read)
        except StateConflict as exc:
            assert exc.current is not None
            assert exc.current.version > read
            return None
        assert doc.version == read + 1
        return doc

    results = await asyncio.gather(*(writer(i) for i in range(50)))
    wins = [r for r in results if r is not None]
    final = await store.state_get(NS, "cas")
    assert wins
    assert len(wins) == final.version
    assert sorted(w.version for w in wins) == list(range(1, final.version + 1))
    assert final.value == max(wins, key=lambda w: w.version).value


async def test_concurrent_increments_add_up(store: Store) -> None:
    results = await asyncio.gather(
        *(store.state_increment(NS, "counter", ["n"], 1) for _ in range(50))
    )
    final = await store.state_get(NS, "counter")
    assert typed(final.value) == typed({"n": 50})
    assert final.version == 50
    assert sorted(r.version for r in results) == list(range(1, 51))
    assert all(r.value["n"] == r.version for r in results)


async def test_concurrent_patches_of_different_fields_all_land(store: Store) -> None:
    await asyncio.gather(*(store.state_patch(NS, "merged", {f"k{i}": i}) for i in range(20)))
    final = await store.state_get(NS, "merged")
    assert final.value == {f"k{i}": i for i in range(20)}
    assert final.version == 20


# -- shared state ---------------------------------------------------------------------


async def test_state_get_unknown_is_not_found(store: Store) -> None:
    error = await fails(store.state_get(NS, "missing"), NotFound, "state_not_found")
    assert error.status == 404


async def test_put_without_version_is_last_writer_wins(store: Store) -> None:
    for version, value in enumerate([{"a": 1}, {"a": 2}, {"b": 3}], start=1):
        doc = await store.state_put(NS, "lww", value)
        assert doc == StateDoc(value, version)
        assert await store.state_get(NS, "lww") == StateDoc(value, version)


async def test_put_with_version_zero_creates_only_if_absent(store: Store) -> None:
    assert await store.state_put(NS, "once", {"v": 1}, expected_version=0) == StateDoc({"v": 1}, 1)
    error = await fails(
        store.state_put(NS, "once", {"v": 2}, expected_version=0), StateConflict, "version_conflict"
    )
    assert error.current == StateDoc({"v": 1}, 1)
    assert await store.state_get(NS, "once") == StateDoc({"v": 1}, 1)


async def test_cas_with_matching_version_writes(store: Store) -> None:
    await store.state_put(NS, "doc", {"v": 1})
    await store.state_put(NS, "doc", {"v": 2})
    assert await store.state_put(NS, "doc", {"v": 3}, expected_version=2) == StateDoc({"v": 3}, 3)
    assert await store.state_get(NS, "doc") == StateDoc({"v": 3}, 3)


async def test_cas_conflict_returns_current_version(store: Store) -> None:
    await store.state_put(NS, "doc", {"v": 1})
    await store.state_put(NS, "doc", {"v": 2, "list": []})
    error = await fails(
        store.state_put(NS, "doc", {"v": 9}, expected_version=1), StateConflict, "version_conflict"
    )
    assert error.status == 412
    assert error.current is not None
    assert typed(error.current.value) == typed({"v": 2, "list": []})
    assert error.current.version == 2
    assert error.to_dict()["error"]["current"] == {"value": {"v": 2, "list": []}, "version": 2}
    await fails(
        store.state_put(NS, "doc", {"v": 9}, expected_version=3), StateConflict, "version_conflict"
    )
    assert await store.state_get(NS, "doc") == StateDoc({"v": 2, "list": []}, 2)


async def test_cas_on_missing_doc_conflicts_with_no_current(store: Store) -> None:
    error = await fails(
        store.state_put(NS, "ghost", {"v": 1}, expected_version=4),
        StateConflict,
        "version_conflict",
    )
    assert error.current is None
    await fails(store.state_get(NS, "ghost"), NotFound, "state_not_found")


async def test_state_delete_removes_the_doc(store: Store) -> None:
    await store.state_put(NS, "del", {"v": 1})
    await store.state_delete(NS, "del")
    await fails(store.state_get(NS, "del"), NotFound, "state_not_found")
    assert (await store.state_put(NS, "del", {"v": 2}, expected_version=0)).value == {"v": 2}


async def test_state_delete_with_matching_version(store: Store) -> None:
    await store.state_put(NS, "del", {"v": 1})
    await store.state_put(NS, "del", {"v": 2})
    await store.state_delete(NS, "del", expected_version=2)
    await fails(store.state_get(NS, "del"), NotFound, "state_not_found")


async def test_state_delete_with_wrong_version_conflicts(store: Store) -> None:
    await store.state_put(NS, "del", {"v": 1})
    await store.state_put(NS, "del", {"v": 2})
    error = await fails(
        store.state_delete(NS, "del", expected_version=1), StateConflict, "version_conflict"
    )
    assert error.current == StateDoc({"v": 2}, 2)
    assert await store.state_get(NS, "del") == StateDoc({"v": 2}, 2)


async def test_state_delete_unknown_is_not_found(store: Store) -> None:
    await fails(store.state_delete(NS, "none"), NotFound, "state_not_found")
    await fails(store.state_delete(NS, "none", expected_version=1), NotFound, "state_not_found")


async def test_state_keys_are_separate_per_namespace(store: Store) -> None:
    await store.state_put("ns-a", "k", 1)
    await store.state_put("ns-b", "k", 2)
    await store.state_put("ns-a", "k2", 3)
    assert (await store.state_get("ns-a", "k")).value == 1
    assert (await store.state_get("ns-b", "k")).value == 2
    await store.state_delete("ns-a", "k")
    assert (await store.state_get("ns-b", "k")).value == 2


# RFC 7386, appendix A: (target, patch, result).
RFC7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ({"a": {"b": 1, "c": [1, 2]}}, {"a": {"c": [3]}}, {"a": {"b": 1, "c": [3]}}),
    ({"keep": [], "n": 1}, {"n": 2}, {"keep": [], "n": 2}),
    ({"a": 1}, "replaced", "replaced"),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386_EXAMPLES, ids=repr)
async def test_state_patch_follows_rfc7386(
    store: Store, target: Any, patch: Any, result: Any
) -> None:
    await store.state_put(NS, "patched", target)
    doc = await store.state_patch(NS, "patched", patch)
    assert typed(doc.value) == typed(result)
    assert doc.version == 2
    assert typed((await store.state_get(NS, "patched")).value) == typed(result)


async def test_state_patch_on_missing_doc_creates_it(store: Store) -> None:
    doc = await store.state_patch(NS, "fresh", {"a": {"b": 1}, "gone": None})
    assert doc == StateDoc({"a": {"b": 1}}, 1)
    assert await store.state_get(NS, "fresh") == StateDoc({"a": {"b": 1}}, 1)


async def test_state_patch_bumps_version_each_time(store: Store) -> None:
    for i in range(1, 4):
        assert (await store.state_patch(NS, "bump", {f"k{i}": i})).version == i
    assert (await store.state_get(NS, "bump")).value == {"k1": 1, "k2": 2, "k3": 3}


KEYS = st.sampled_from(["a", "b", "c", "d"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3))


JSON_VALUES = st.recursive(SCALARS, _containers, max_leaves=8)
JSON_OBJECTS = st.dictionaries(KEYS, JSON_VALUES, max_size=4)
_patch_keys = itertools.count()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(target=JSON_OBJECTS, patch=JSON_OBJECTS)
async def test_state_patch_matches_merge_patch(store: Store, target: Any, patch: Any) -> None:
    key = f"prop-{next(_patch_keys)}"
    await store.state_put(NS, key, target)
    expected = merge_patch(target, patch)
    doc = await store.state_patch(NS, key, patch)
    assert typed(doc.value) == typed(expected)
    stored = await store.state_get(NS, key)
    assert typed(stored.value) == typed(expected)
    assert stored.version == doc.version == 2


async def test_state_increment_creates_missing_doc_and_parents(store: Store) -> None:
    doc = await store.state_increment(NS, "counts", ["a", "b", "c"], 1)
    assert doc == StateDoc({"a": {"b": {"c": 1}}}, 1)
    assert await store.state_get(NS, "counts") == doc


async def test_state_increment_adds_ints_and_floats(store: Store) -> None:
    await store.state_put(NS, "nums", {"n": 5, "keep": [], "big": 2**60 + 1, "other": {"x": 1}})
    doc = await store.state_increment(NS, "nums", ["n"], 3)
    assert typed(doc.value["n"]) == typed(8)
    doc = await store.state_increment(NS, "nums", ["n"], -10)
    assert typed(doc.value["n"]) == typed(-2)
    doc = await store.state_increment(NS, "nums", ["f"], 0.25)
    assert typed(doc.value["f"]) == typed(0.25)
    doc = await store.state_increment(NS, "nums", ["n"], 0.5)
    assert typed(doc.value["n"]) == typed(-1.5)
    doc = await store.state_increment(NS, "nums", ["other", "y"], 2)
    expected = {"n": -1.5, "keep": [], "big": 2**60 + 1, "other": {"x": 1, "y": 2}, "f": 0.25}
    assert typed((await store.state_get(NS, "nums")).value) == typed(expected)
    assert doc.version == 6


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"a": "text"}, ["a"]),
        ({"a": True}, ["a"]),
        ({"a": [1]}, ["a"]),
        ({"a": {"b": 1}}, ["a"]),
        ({"a": 5}, ["a", "b"]),
        ({"a": [0]}, ["a", "b"]),
        ({"a": {"b": "x"}}, ["a", "b", "c"]),
        ([1, 2], ["a"]),
        ("scalar", ["a"]),
        (7, ["a"]),
    ],
    ids=repr,
)
async def test_state_increment_refuses_non_number_or_non_object_path(
    store: Store, value: Any, path: list[str]
) -> None:
    await store.state_put(NS, "inc", value)
    error = await fails(store.state_increment(NS, "inc", path, 1), BadRequest, "invalid_path")
    assert error.status == 400
    after = await store.state_get(NS, "inc")
    assert (typed(after.value), after.version) == (typed(value), 1)


@pytest.mark.parametrize("path", [[], [""], ["a", ""], [1], ["a", None]], ids=repr)
async def test_state_increment_refuses_bad_path(store: Store, path: Any) -> None:
    await fails(store.state_increment(NS, "inc", path, 1), BadRequest, "invalid_path")
    await fails(store.state_get(NS, "inc"), NotFound, "state_not_found")


async def test_state_increment_refuses_overflow_to_infinity(store: Store) -> None:
    await store.state_put(NS, "inc", {"n": 1e308})
    await fails(store.state_increment(NS, "inc", ["n"], 1e308), BadRequest, "invalid_increment")
    assert await store.state_get(NS, "inc") == StateDoc({"n": 1e308}, 1)


@pytest.mark.parametrize("by", [True, "1", None, [1]], ids=repr)
async def test_state_increment_refuses_non_number_amount(store: Store, by: Any) -> None:
    await fails(store.state_increment(NS, "inc", ["n"], by), BadRequest, "invalid_increment")
    await fails(store.state_get(NS, "inc"), NotFound, "state_not_found")


async def test_value_larger_than_limit_is_refused(store: Store) -> None:
    limit = store.config.state.max_value_bytes
    at_limit = "x" * (limit - 2)  # two bytes of quotes: exactly the limit encoded
    assert (await store.state_put(NS, "big", at_limit)).version == 1
    assert (await store.state_get(NS, "big")).value == at_limit
    error = await fails(
        store.state_put(NS, "big", at_limit + "x"), PayloadTooLarge, "value_too_large"
    )
    assert error.status == 413
    assert (await store.state_get(NS, "big")).version == 1


async def test_patch_growing_past_limit_is_refused(store: Store) -> None:
    limit = store.config.state.max_value_bytes
    await store.state_put(NS, "grow", {"a": "x" * (limit // 2)})
    await fails(
        store.state_patch(NS, "grow", {"b": "y" * (limit // 2)}), PayloadTooLarge, "value_too_large"
    )
    assert list((await store.state_get(NS, "grow")).value) == ["a"]


INVALID_NAMES: list[Any] = ["", "a/b", "a b", "{a}", "a}", "x" * 201, "_lead", "a\n", 5, None]


def state_calls(namespace: Any, key: Any) -> list[Callable[[Store], Awaitable[Any]]]:
    return [
        lambda s: s.state_get(namespace, key),
        lambda s: s.state_put(namespace, key, 1),
        lambda s: s.state_put(namespace, key, 1, expected_version=0),
        lambda s: s.state_delete(namespace, key),
        lambda s: s.state_patch(namespace, key, {"a": 1}),
        lambda s: s.state_increment(namespace, key, ["a"], 1),
    ]


@pytest.mark.parametrize("bad", INVALID_NAMES, ids=repr)
async def test_invalid_namespace_is_refused(store: Store, bad: Any) -> None:
    for call in state_calls(bad, "key"):
        await fails(call(store), BadRequest, "invalid_namespace")


@pytest.mark.parametrize("bad", INVALID_NAMES, ids=repr)
async def test_invalid_key_is_refused(store: Store, bad: Any) -> None:
    for call in state_calls(NS, bad):
        await fails(call(store), BadRequest, "invalid_key")


async def test_longest_names_are_accepted(store: Store) -> None:
    namespace, key = "n" * 200, "k.-_:" + "k" * 195
    await store.state_put(namespace, key, {"ok": True})
    assert (await store.state_get(namespace, key)).value == {"ok": True}


STATE_VALUES: list[Any] = [
    [],
    {},
    [[]],
    {"a": []},
    {"a": {}},
    2**60 + 1,
    -(2**63),
    2**64 - 1,
    0,
    1.0,
    0.1,
    -2.5e-300,
    1e300,
    True,
    False,
    None,
    "",
    "unicode: héllo 日本 🚀",
    [1, 1.0, True, None, "1"],
    {"nested": {"deep": [{"x": [], "y": {}, "z": 2**53 + 1}]}, "f": 3.141592653589793},
]


@pytest.mark.parametrize("value", STATE_VALUES, ids=repr)
async def test_state_values_keep_their_exact_types(store: Store, value: Any) -> None:
    assert typed((await store.state_put(NS, "typed", value)).value) == typed(value)
    assert typed((await store.state_get(NS, "typed")).value) == typed(value)


async def test_patch_and_increment_keep_untouched_values_exact(store: Store) -> None:
    value = {"list": [], "obj": {}, "big": 2**60 + 1, "f": 0.1, "s": "ü", "n": 0, "t": True}
    await store.state_put(NS, "exact", value)
    await store.state_patch(NS, "exact", {"added": [[]]})
    await store.state_increment(NS, "exact", ["n"], 1)
    expected = {**value, "added": [[]], "n": 1}
    assert typed((await store.state_get(NS, "exact")).value) == typed(expected)


# -- events ---------------------------------------------------------------------------


async def test_watch_replays_stored_messages(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user(f"m{i}") for i in range(1, 6)])
    async with aclosing(store.watch(sid, after=0)) as gen:
        got = await collect_messages(gen, sid, 5)
        assert got == appended
        await assert_nothing_pending(store, sid, gen)


async def test_watch_receives_live_messages(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user("first")])
    async with aclosing(store.watch(sid, after=0)) as gen:
        assert await collect_messages(gen, sid, 1) == appended  # now subscribed
        appended += await store.append(sid, [user("second")])
        appended += await store.append(sid, [user("third"), user("fourth")])
        assert await collect_messages(gen, sid, 4) == appended[1:]
        await assert_nothing_pending(store, sid, gen)


async def test_watch_after_seq_sends_only_later_messages(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user(f"m{i}") for i in range(1, 6)])
    async with aclosing(store.watch(sid, after=3)) as gen:
        first = await next_event(gen)
        assert first == Event(sid, "messages", tuple(appended[3:]))
        appended += await store.append(sid, [user("m6")])
        assert await collect_messages(gen, sid, 6) == appended[5:]
        await assert_nothing_pending(store, sid, gen)


async def test_watch_after_last_seq_waits_for_new_messages(store: Store) -> None:
    sid = await new_session(store, "m1", "m2")
    async with aclosing(store.watch(sid, after=2)) as gen:
        receive = asyncio.ensure_future(next_event(gen))
        try:
            # Nothing is due until a message is appended...
            done, _ = await asyncio.wait({receive}, timeout=0.2)
            assert not done
            appended = await store.append(sid, [user("m3")])
            # ...and then exactly that one, live or read back: after=2 means no gap.
            assert await asyncio.wait_for(receive, TIMEOUT) == Event(
                sid, "messages", tuple(appended)
            )
        finally:
            receive.cancel()
            with contextlib.suppress(BaseException):
                await receive


async def test_watch_mixes_replay_and_live_without_gaps_or_duplicates(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user(f"pre{i}") for i in range(5)])
    async with aclosing(store.watch(sid, after=0)) as gen:
        # The watcher subscribes while these appends race it: each message must arrive
        # once, whether it is read back from history or received live.
        reader = asyncio.create_task(collect_messages(gen, sid, 40))
        try:
            for i in range(15):
                appended += await store.append(sid, [user(f"live{i}")])
                await asyncio.sleep(0)
            for batch in await asyncio.gather(
                *(store.append(sid, [user(f"c{i}a"), user(f"c{i}b")]) for i in range(10))
            ):
                appended += batch
            got = await asyncio.wait_for(reader, TIMEOUT * 2)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        assert seqs(got) == list(range(1, 41))
        assert got == sorted(appended, key=lambda m: m["seq"])
        await assert_nothing_pending(store, sid, gen)


async def test_published_event_reaches_watcher(store: Store) -> None:
    sid = await new_session(store, "hello")
    async with aclosing(store.watch(sid, after=0)) as gen:
        await collect_messages(gen, sid, 1)
        await store.publish(sid, "typing", {"x": 1})
        event = await next_event(gen)
        assert event == Event(sid, "typing", data={"x": 1})
        assert event.messages == ()
        await store.publish(sid, "status", {"nested": {"ok": [True]}, "u": "ü"})
        assert await next_event(gen) == Event(
            sid, "status", data={"nested": {"ok": [True]}, "u": "ü"}
        )


async def test_published_event_stays_in_its_session(store: Store) -> None:
    sid = await new_session(store, "hello")
    other = await new_session(store, "other")
    async with aclosing(store.watch(sid, after=0)) as gen:
        await collect_messages(gen, sid, 1)
        await store.publish(other, "typing", {"who": "other"})
        await store.append(other, [user("not for this watcher")])
        await store.publish(sid, "typing", {"who": "mine"})
        assert await next_event(gen) == Event(sid, "typing", data={"who": "mine"})


async def test_deleting_the_session_ends_the_watch(store: Store) -> None:
    sid = await new_session(store, "hello")
    async with aclosing(store.watch(sid, after=0)) as gen:
        await collect_messages(gen, sid, 1)
        await store.delete_session(sid)
        event = await next_event(gen)
        assert (event.session_id, event.kind, event.messages) == (sid, "deleted", ())
        with pytest.raises(StopAsyncIteration):
            await next_event(gen)


async def test_two_watchers_both_receive_every_message(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user("m1")])
    async with (
        aclosing(store.watch(sid, after=0)) as one,
        aclosing(store.watch(sid, after=0)) as two,
    ):
        assert await collect_messages(one, sid, 1) == appended
        assert await collect_messages(two, sid, 1) == appended
        appended += await store.append(sid, [user("m2"), user("m3")])
        for i in range(4, 11):
            appended += await store.append(sid, [user(f"m{i}")])
        got_one, got_two = await asyncio.gather(
            collect_messages(one, sid, 10), collect_messages(two, sid, 10)
        )
        assert got_one == got_two == appended[1:]
        await store.publish(sid, "typing", {"x": 1})
        assert await next_event(one) == await next_event(two) == Event(sid, "typing", data={"x": 1})


async def test_closing_one_watcher_leaves_the_other(store: Store) -> None:
    sid = await new_session(store, "m1")
    async with aclosing(store.watch(sid, after=0)) as staying:
        await collect_messages(staying, sid, 1)
        async with aclosing(store.watch(sid, after=0)) as leaving:
            await collect_messages(leaving, sid, 1)
        await store.append(sid, [user("m2")])
        assert seqs(await collect_messages(staying, sid, 2)) == [2]


async def test_watch_of_unknown_session_is_not_found(store: Store) -> None:
    async with aclosing(store.watch("nobody", after=0)) as gen:
        with pytest.raises(NotFound) as info:
            await next_event(gen)
        assert info.value.code == "session_not_found"
