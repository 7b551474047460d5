"""Tenants in the store, on every topology: each tenant's view (``Store.for_tenant``) keeps
its sessions, events, turn leases, shared state and response records apart from every
other tenant's, with the same ids; on Redis its keys carry the tenant's prefix outside
the hash tag, so a session stays on its slot; tenant "" keeps today's keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from agentd.config import Config, from_dict
from agentd.errors import NotFound
from agentd.fastpath import key_slot
from agentd.store import Store, open_store
from agentd.store.keys import job_id, job_of, record_keys, session_keys, state_key, tenant_prefix

from .store_helpers import NS, TIMEOUT, fails, user

TENANTS = ("", "acme", "globex")


async def test_for_tenant_is_cached_per_tenant_and_tenant_empty_is_the_store(store: Store) -> None:
    acme = store.for_tenant("acme")
    assert acme.tenant == "acme" and store.tenant == ""
    assert store.for_tenant("acme") is acme
    assert store.for_tenant("") is store and acme.for_tenant("") is store
    assert acme.for_tenant("globex") is store.for_tenant("globex")
    with pytest.raises(ValueError):
        store.for_tenant("no/slash")


async def test_the_same_session_id_is_a_different_session_per_tenant(store: Store) -> None:
    views = [store.for_tenant(t) for t in TENANTS]
    for i, view in enumerate(views):
        info = await view.create_session("shared-id", agent=f"agent{i}")
        assert info.tenant == (view.tenant or None)
        await view.append("shared-id", [user(f"hello from {view.tenant or 'nobody'}")] * (i + 1))
    for i, view in enumerate(views):
        info = await view.get_session("shared-id")
        assert (info.agent, info.last_seq, info.tenant) == (f"agent{i}", i + 1, view.tenant or None)
        said = [m["content"] for m in await view.history("shared-id")]
        assert said == [f"hello from {view.tenant or 'nobody'}"] * (i + 1)
    await views[1].delete_session("shared-id")
    await fails(views[1].get_session("shared-id"), NotFound, "session_not_found")
    assert (await views[0].get_session("shared-id")).last_seq == 1
    assert (await views[2].get_session("shared-id")).last_seq == 3


async def test_another_tenants_session_answers_as_a_missing_one(store: Store) -> None:
    sid = (await store.for_tenant("acme").create_session()).id
    other = store.for_tenant("globex")
    for step in (
        other.get_session(sid),
        other.history(sid),
        other.append(sid, [user("x")]),
        other.delete_session(sid),
        other.update_session(sid, metadata={"a": "b"}),
        other.load(sid, 5),
        other.begin_turn(sid, 5, 5.0),
        store.get_session(sid),
    ):
        error = await fails(step, NotFound, "session_not_found")
        missing = await fails(other.get_session(sid), NotFound, "session_not_found")
        assert error.to_dict() == missing.to_dict()
    assert (await store.for_tenant("acme").get_session(sid)).id == sid


async def test_turn_leases_are_per_tenant(store: Store) -> None:
    a, b = store.for_tenant("acme"), store.for_tenant("globex")
    for view in (a, b):
        await view.create_session("leased")
    held_a = await a.begin_turn("leased", 5, 30.0)
    held_b = await b.begin_turn("leased", 5, 30.0)
    assert held_a is not None and held_b is not None
    assert await a.begin_turn("leased", 5, 30.0) is None  # a's own lease still holds
    assert await b.interrupt_turn("leased")
    assert await a.renew_turn("leased", held_a.token, 30.0) == "held"
    await a.end_turn("leased", held_a.token, [user("a")])
    await b.end_turn("leased", held_b.token, [user("b")])
    assert [m["content"] for m in await a.history("leased")] == ["a"]
    assert [m["content"] for m in await b.history("leased")] == ["b"]


async def test_shared_state_is_per_tenant(store: Store) -> None:
    views = [store.for_tenant(t) for t in TENANTS]
    for i, view in enumerate(views):
        await view.state_put(NS, "doc", {"owner": view.tenant, "i": i})
        await view.state_increment(NS, "doc", ["n"], i + 1)
    for i, view in enumerate(views):
        doc = await view.state_get(NS, "doc")
        assert doc.value == {"owner": view.tenant, "i": i, "n": i + 1}
        assert doc.version == 2
    await views[2].state_delete(NS, "doc")
    await fails(views[2].state_get(NS, "doc"), NotFound, "state_not_found")
    await fails(store.for_tenant("initech").state_get(NS, "doc"), NotFound, "state_not_found")
    assert (await views[0].state_get(NS, "doc")).value["owner"] == ""


async def test_response_records_are_per_tenant(store: Store) -> None:
    rid = "resp_" + "0" * 48
    for view in (store.for_tenant(t) for t in TENANTS):
        who = view.tenant.encode()
        first = (0, b'{"sequence_number":0,"who":"%s"}' % who)
        await view.jobs.create(rid, {"status": b"queued", "who": who}, 60, [first])
    acme, globex = store.for_tenant("acme").jobs, store.for_tenant("globex").jobs
    assert (await acme.read(rid) or {})["who"] == b"acme"
    assert await acme.events(rid, -1) == [b'{"sequence_number":0,"who":"acme"}']
    start = await acme.start(rid, 3, "c1")
    assert (start.verdict, start.attempt) == ("run", 1)
    assert (await globex.read(rid) or {})["status"] == b"queued"
    assert await globex.cancel(rid) == "queued"
    assert not await acme.cancel_asked(rid)
    assert await globex.delete(rid)
    assert await globex.read(rid) is None
    assert await store.for_tenant("initech").jobs.read(rid) is None
    assert (await store.jobs.read(rid) or {})["who"] == b""
    assert (await acme.read(rid) or {})["status"] == b"in_progress"


async def test_a_tenants_record_feed_hears_only_its_record(store: Store) -> None:
    rid = "resp_" + "1" * 48
    acme, globex = store.for_tenant("acme").jobs, store.for_tenant("globex").jobs
    for jobs in (acme, globex):
        await jobs.create(rid, {"status": b"queued"}, 60)
    feed = await acme.subscribe(rid)
    try:
        await globex.start(rid, 3, "c")
        await globex.emit(rid, 1, [(0, b"globex")])
        await acme.start(rid, 3, "c")
        await acme.emit(rid, 1, [(0, b"acme")])
        assert await asyncio.wait_for(feed.get(), TIMEOUT) == b"acme"
    finally:
        await feed.close()


async def test_listing_shows_only_the_tenants_own_sessions(store: Store) -> None:
    made: dict[str, set[str]] = {}
    for tenant in TENANTS:
        view = store.for_tenant(tenant)
        made[tenant] = {(await view.create_session()).id for _ in range(4)}
        await view.create_session("everywhere")
        made[tenant].add("everywhere")
    for tenant in TENANTS:
        view = store.for_tenant(tenant)
        listed: list[str] = []
        after = None
        while True:
            page = await view.list_sessions(limit=2, after=after)
            listed += [s.id for s in page.sessions]
            assert all(s.tenant == (tenant or None) for s in page.sessions)
            if page.next_after is None:
                break
            after = page.next_after
        assert sorted(listed) == sorted(made[tenant])
    assert (await store.for_tenant("initech").list_sessions(limit=10)).sessions == []


async def test_a_watch_hears_only_its_tenants_session(store: Store) -> None:
    acme, globex = store.for_tenant("acme"), store.for_tenant("globex")
    for view in (store, acme, globex):
        await view.create_session("watched")
    events = await acme.open_watch("watched")
    try:
        await globex.append("watched", [user("globex")])
        await store.append("watched", [user("nobody")])
        await globex.publish("watched", "typing", {"who": "globex"})
        await acme.append("watched", [user("acme")])
        event = await asyncio.wait_for(anext(events), TIMEOUT)
        assert [m["content"] for m in event.messages] == ["acme"]
        await globex.delete_session("watched")
        await acme.publish("watched", "typing", {"who": "acme"})
        event = await asyncio.wait_for(anext(events), TIMEOUT)
        assert (event.kind, event.data) == ("typing", {"who": "acme"})
    finally:
        await events.aclose()
    await fails(
        store.for_tenant("initech").watch("watched", after=0).__anext__(),
        NotFound,
        "session_not_found",
    )


def test_queued_job_ids_carry_the_tenant() -> None:
    assert job_id("", "resp_1") == "resp_1" and job_of("resp_1") == ("", "resp_1")
    assert job_id("acme", "resp_1") == "acme/resp_1"
    assert job_of("acme/resp_1") == ("acme", "resp_1")


# -- the keys in Redis ---------------------------------------------------------------


@pytest.fixture(params=["single", "sharded", "cluster"])
def redis_config(request: pytest.FixtureRequest) -> Config:
    if request.param == "single":
        urls = [request.getfixturevalue("redis_standalone").url]
    elif request.param == "sharded":
        urls = [s.url for s in request.getfixturevalue("redis_shards")]
    else:
        urls = request.getfixturevalue("redis_cluster").urls
        return from_dict({"redis": {"urls": urls, "cluster": True}})
    return from_dict({"redis": {"urls": urls}})


@pytest.fixture
async def redis_store(redis_config: Config) -> AsyncIterator[Store]:
    instance = open_store(redis_config)
    await instance.start()
    yield instance
    await instance.close()


def _keys_by_server(config: Config) -> dict[str, set[str]]:
    """Every key of every server (a cluster node's own keys only), by server URL."""
    found = {}
    for url in config.redis.urls:
        with redis.Redis.from_url(url) as client:
            found[url] = {k.decode() for k in client.keys("*")}
    return found


async def test_a_named_tenants_keys_carry_its_prefix_outside_the_hash_tag(
    redis_store: Store, redis_config: Config
) -> None:
    acme = redis_store.for_tenant("acme")
    sid = (await acme.create_session()).id
    await acme.append(sid, [user("hi")])
    held = await acme.begin_turn(sid, 1, 30.0)
    assert held is not None
    await acme.state_put(NS, "doc", {"a": 1})
    rid = "resp_" + "2" * 48
    await acme.jobs.create(rid, {"status": b"queued"}, 60, [(0, b"{}")])
    await acme.list_sessions(limit=10)  # a cluster's index writes are flushed first

    by_server = _keys_by_server(redis_config)
    every = set().union(*by_server.values())
    prefix = tenant_prefix("acme")
    assert prefix == "agentd:t:acme:"
    expected = {
        f"agentd:t:acme:s:{{{sid}}}:meta",
        f"agentd:t:acme:s:{{{sid}}}:log",
        f"agentd:t:acme:s:{{{sid}}}:turn",
        f"agentd:t:acme:st:{{{NS}/doc}}",
        f"agentd:t:acme:r:{{{rid}}}",
        f"agentd:t:acme:r:{{{rid}}}:ev",
    }
    assert expected <= every
    assert any(k.startswith("agentd:t:acme:sx:{") for k in every)
    # Nothing of the tenant's is under the plain prefix.
    assert all(k.startswith(prefix) for k in every), every
    # Each session key is on the slot of its plain twin, and all on one server.
    meta, log = session_keys(sid, prefix)
    assert key_slot(meta) == key_slot(session_keys(sid)[0]) == key_slot(log)
    assert key_slot(state_key(f"{NS}/doc", prefix)) == key_slot(state_key(f"{NS}/doc"))
    assert key_slot(record_keys(rid, prefix)[0]) == key_slot(record_keys(rid)[0])
    holders = [url for url, keys in by_server.items() if meta in keys]
    assert len(holders) == 1
    assert f"agentd:t:acme:s:{{{sid}}}:log" in by_server[holders[0]]
    assert f"agentd:t:acme:s:{{{sid}}}:turn" in by_server[holders[0]]
    if redis_config.redis.cluster:
        with redis.Redis.from_url(holders[0]) as node:
            assert node.execute_command("CLUSTER", "KEYSLOT", meta) == key_slot(meta)


async def test_tenant_empty_keeps_the_plain_keys(redis_store: Store, redis_config: Config) -> None:
    sid = (await redis_store.create_session()).id
    await redis_store.append(sid, [user("hi")])
    await redis_store.state_put(NS, "doc", {"a": 1})
    every = set().union(*_keys_by_server(redis_config).values())
    plain = {f"agentd:s:{{{sid}}}:meta", f"agentd:s:{{{sid}}}:log", f"agentd:st:{{{NS}/doc}}"}
    assert plain <= every
    assert not any(k.startswith("agentd:t:") for k in every)


async def test_a_view_shares_its_stores_connections(redis_store: Store) -> None:
    acme = redis_store.for_tenant("acme")
    assert acme.shards is redis_store.shards  # type: ignore[attr-defined]
    assert acme.hub is redis_store.hub  # type: ignore[attr-defined]
    assert acme.index_writes is redis_store.index_writes  # type: ignore[attr-defined]
    assert acme.jobs is not redis_store.jobs


async def test_views_beyond_the_bound_are_made_again_and_find_their_data(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agentd.store.base.MAX_VIEWS", 2)
    tenants = [f"t{i}" for i in range(5)]
    for tenant in tenants:
        await store.for_tenant(tenant).create_session("kept", metadata={"by": tenant})
        await store.for_tenant(tenant).state_put(NS, "doc", tenant)
    assert len(store._views) == 2  # type: ignore[attr-defined]
    for tenant in tenants:
        view = store.for_tenant(tenant)
        assert (await view.get_session("kept")).metadata == {"by": tenant}
        assert (await view.state_get(NS, "doc")).value == tenant
