"""Listing shared state on every store topology: namespaces and documents in name order,
a page at a time, each tenant its own, deletes leaving no entry behind."""

from __future__ import annotations

import asyncio

import redis

from agentd.config import from_dict
from agentd.errors import BadRequest
from agentd.store import StateEntry, StateListing, StateNamespace, Store, open_store

from .procs import RedisServer
from .store_helpers import fails


async def all_documents(store: Store, namespace: str, limit: int, prefix: str = "") -> list[str]:
    """Every key of ``namespace`` read page by page; each page holds at most ``limit``."""
    keys: list[str] = []
    after = None
    while True:
        page = await store.list_state_documents(namespace, limit=limit, after=after, prefix=prefix)
        assert len(page.data) <= limit
        keys += [entry.key for entry in page.data]
        if page.next_after is None:
            return keys
        after = page.next_after


async def all_namespaces(store: Store, limit: int) -> list[StateNamespace]:
    found: list[StateNamespace] = []
    after = None
    while True:
        page = await store.list_state_namespaces(limit=limit, after=after)
        found += page.data
        if page.next_after is None:
            return found
        after = page.next_after


async def test_nothing_written_lists_nothing(store: Store) -> None:
    assert await store.list_state_namespaces(limit=10) == StateListing([], None)
    assert await store.list_state_documents("none", limit=10) == StateListing([], None)


async def test_documents_are_listed_by_key_with_version_and_size(store: Store) -> None:
    await store.state_put("app", "b", {"x": 1})
    await store.state_put("app", "a", [1, 2, 3])
    await store.state_put("app", "a", "long enough")  # an update: same entry, version 2
    await store.state_patch("app", "c", {"n": 1})
    await store.state_increment("app", "d", ["hits"], 1)
    page = await store.list_state_documents("app", limit=10)
    assert page == StateListing(
        [
            StateEntry("a", 2, len(b'"long enough"')),
            StateEntry("b", 1, len(b'{"x":1}')),
            StateEntry("c", 1, len(b'{"n":1}')),
            StateEntry("d", 1, len(b'{"hits":1}')),
        ],
        None,
    )
    assert await store.list_state_namespaces(limit=10) == StateListing(
        [StateNamespace("app", 4)], None
    )


async def test_pages_cover_every_document_once_in_order(store: Store) -> None:
    keys = [f"doc-{i:03d}" for i in range(57)]
    for key in keys:
        await store.state_put("many", key, {"k": key})
    for limit in (1, 7, 56, 57, 100):
        assert await all_documents(store, "many", limit) == keys
    first = await store.list_state_documents("many", limit=57)
    assert first.next_after is None and len(first.data) == 57
    second = await store.list_state_documents("many", limit=10, after="doc-009")
    assert [e.key for e in second.data] == keys[10:20]
    assert second.next_after == "doc-019"


async def test_prefix_narrows_the_documents(store: Store) -> None:
    for key in ("user:1", "user:2", "user:10", "users", "team:1", "u"):
        await store.state_put("p", key, 1)
    assert await all_documents(store, "p", 2, prefix="user:") == ["user:1", "user:10", "user:2"]
    assert await all_documents(store, "p", 10, prefix="user") == [
        "user:1",
        "user:10",
        "user:2",
        "users",
    ]
    # A cursor before the prefix starts at the prefix, one past it finds nothing.
    page = await store.list_state_documents("p", limit=10, after="a", prefix="team")
    assert [e.key for e in page.data] == ["team:1"]
    assert (await store.list_state_documents("p", limit=10, after="v", prefix="u")).data == []


async def test_namespaces_are_paged_with_their_counts(store: Store) -> None:
    names = [f"ns-{i:02d}" for i in range(23)]
    for i, name in enumerate(names):
        for j in range(i % 3 + 1):
            await store.state_put(name, f"k{j}", j)
    listed = await all_namespaces(store, 5)
    assert listed == [StateNamespace(n, i % 3 + 1) for i, n in enumerate(names)]


async def test_delete_removes_the_entry_and_the_empty_namespace(store: Store) -> None:
    await store.state_put("gone", "a", 1)
    await store.state_put("gone", "b", 2)
    await store.state_put("kept", "a", 3)
    await store.state_delete("gone", "a")
    assert [e.key for e in (await store.list_state_documents("gone", limit=10)).data] == ["b"]
    assert await store.list_state_namespaces(limit=10) == StateListing(
        [StateNamespace("gone", 1), StateNamespace("kept", 1)], None
    )
    await store.state_delete("gone", "b", expected_version=1)
    assert await store.list_state_documents("gone", limit=10) == StateListing([], None)
    assert await store.list_state_namespaces(limit=10) == StateListing(
        [StateNamespace("kept", 1)], None
    )
    # Created again: listed again, at version 1.
    await store.state_put("gone", "a", 4)
    assert (await store.list_state_documents("gone", limit=10)).data == [StateEntry("a", 1, 1)]


async def test_a_stale_entry_is_left_out_and_removed(store: Store) -> None:
    """An entry whose document is gone (a delete that raced a create) is not listed, and
    the listing cleans it; a live one is never cleaned."""
    await store.state_put("heal", "live", 1)
    await store.state_put("heal", "z", 1)
    await store._state_index("heal", ["ghost"], add=True)  # type: ignore[attr-defined]
    counts = await store.list_state_namespaces(limit=10)
    assert counts.data == [StateNamespace("heal", 3)]
    page = await store.list_state_documents("heal", limit=2)
    assert [e.key for e in page.data] == ["live"]  # "ghost" left out, the page goes on
    assert page.next_after == "live" or page.next_after == "ghost"
    assert await all_documents(store, "heal", 1) == ["live", "z"]
    assert (await store.list_state_namespaces(limit=10)).data == [StateNamespace("heal", 2)]


async def test_tenants_see_only_their_own_namespaces(store: Store) -> None:
    acme, globex = store.for_tenant("acme"), store.for_tenant("globex")
    await acme.state_put("shared-name", "a", 1)
    await acme.state_put("acme-only", "a", 1)
    await globex.state_put("shared-name", "b", 2)
    await store.state_put("root", "r", 0)
    assert [n.name for n in (await acme.list_state_namespaces(limit=10)).data] == [
        "acme-only",
        "shared-name",
    ]
    assert (await globex.list_state_namespaces(limit=10)).data == [StateNamespace("shared-name", 1)]
    assert (await store.list_state_namespaces(limit=10)).data == [StateNamespace("root", 1)]
    assert [e.key for e in (await globex.list_state_documents("shared-name", limit=10)).data] == [
        "b"
    ]
    assert (await globex.list_state_documents("acme-only", limit=10)).data == []
    await globex.state_delete("shared-name", "b")
    assert [e.key for e in (await acme.list_state_documents("shared-name", limit=10)).data] == ["a"]


async def test_many_documents_in_pages(store: Store) -> None:
    total = 2000
    names = [f"{i:05d}" for i in range(total)]
    # In small batches: each concurrent call may open a connection, and a loaded machine
    # can be slower than redis.connect_timeout to open many at once.
    for start in range(0, total, 10):
        batch = names[start : start + 10]
        await asyncio.gather(*(store.state_put("big", k, k) for k in batch))
    assert await all_documents(store, "big", 500) == names
    assert (await store.list_state_namespaces(limit=1)).data == [StateNamespace("big", total)]
    deleted = names[::2]
    for start in range(0, len(deleted), 10):
        await asyncio.gather(*(store.state_delete("big", k) for k in deleted[start : start + 10]))
    assert await all_documents(store, "big", 333) == names[1::2]


async def test_bad_cursor_and_prefix_are_refused(store: Store) -> None:
    for bad in ("", "has space", "_x", "x" * 201, "a/b"):
        await fails(
            store.list_state_documents("ns", limit=5, after=bad), BadRequest, "invalid_cursor"
        )
        await fails(store.list_state_namespaces(limit=5, after=bad), BadRequest, "invalid_cursor")
    for bad in ("a b", "x" * 201, "{t}"):
        await fails(
            store.list_state_documents("ns", limit=5, prefix=bad), BadRequest, "invalid_prefix"
        )
    await fails(store.list_state_documents("bad ns", limit=5), BadRequest, "invalid_namespace")


def _commands(port: int) -> dict[str, int]:
    with redis.Redis(port=port) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


async def test_a_page_is_one_round_trip_on_one_redis(redis_standalone: RedisServer) -> None:
    """Counted on the server: a page of namespaces and a page of documents (with their
    versions and sizes) are one script each, and an update does not touch the index."""
    store = open_store(from_dict({"redis": {"urls": [redis_standalone.url]}}))
    await store.start()
    try:
        for i in range(30):
            await store.state_put("counted", f"k{i:02d}", i)
        await store.list_state_namespaces(limit=5)  # the scripts are loaded: EVALSHA below
        await store.list_state_documents("counted", limit=5)
        before = _commands(redis_standalone.port)
        await store.list_state_namespaces(limit=5)
        page = await store.list_state_documents("counted", limit=20, after="k03")
        await store.state_put("counted", "k00", "updated")
        after = _commands(redis_standalone.port)
    finally:
        await store.close()
    sent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    sent.pop("info", None)
    sent.pop("hello", None)  # a connection the pool opened meanwhile, not a request
    assert len(page.data) == 20 and page.next_after == "k23"
    # Two listing pages and the update's one write script; nothing else was sent.
    assert sent.pop("evalsha") == 3, sent
    assert sent.pop("zadd", 0) == 0, sent  # the update wrote no index entry
    assert set(sent) <= {"zrangebylex", "zcard", "hget", "hstrlen", "hset"}, sent
