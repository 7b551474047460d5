"""Sessions on every store topology (memory, single Redis, sharded, cluster): ids, create,
get, delete, through :class:`agentd.store.Store` only."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agentd.errors import BadRequest, Conflict, NotFound
from agentd.store import Store

from .store_helpers import (
    fails,
    new_session,
    seqs,
    typed,
    user,
)


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
