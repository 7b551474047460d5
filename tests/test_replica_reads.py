"""Reads served by replicas (``redis.replica_reads``), on real redis-server processes: a
Sentinel group and a plain master with a replica (a Redis Cluster with replicas:
test_replica_reads_cluster.py).

Which server answered is read from the servers themselves (``INFO commandstats``): the
reads at stake (HMGET of a state document, GET of a cache entry, HGETALL of a key record)
are never replicated, so a replica counts only the reads it served."""

from __future__ import annotations

import asyncio
import signal
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agentd.config import ConfigError, from_dict
from agentd.errors import NotFound, StoreUnavailable
from agentd.store import Store, open_store
from agentd.store.api import KeyRecord, StateConflict
from agentd.store.keys import state_key
from agentd.store.redis.replicas import fresh_until

from .procs import free_port
from .replication import ReplicaGroup, Sentinels
from .waiting import wait_until

ALL_KINDS = ["state", "cache", "keys"]


def _calls(port: int, command: str) -> int:
    with redis.Redis(port=port) as client:
        stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def _calls_on(ports: list[int], command: str) -> int:
    return sum(_calls(p, command) for p in ports)


def _caught_up(master: int) -> bool:
    """Whether every replica of the master on ``master`` has applied all of its writes."""
    with redis.Redis(port=master) as client:
        info = client.info("replication")
    ports = [v["port"] for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    offsets = []
    for port in ports:
        with redis.Redis(port=port) as client:
            offsets.append(client.info("replication").get("slave_repl_offset", -1))
    return bool(ports) and min(offsets) >= info["master_repl_offset"]


# Tests that count exactly which server answered use a wide bound (checked every 7.5 s):
# a check delayed by a busy machine must not make a replica stale between two reads.
WIDE_LAG = 30.0


async def _open(urls: list[str], **redis_options: Any) -> Store:
    store = open_store(from_dict({"redis": {"urls": urls, "timeout": 1.0, **redis_options}}))
    await store.start()
    return store


async def _replica_ready(store: Store, master: str) -> None:
    replicas = store.shards.replicas  # type: ignore[attr-defined]
    await wait_until(lambda: replicas.pick(master) is not None, what="a fresh replica")


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[tuple[ReplicaGroup, Sentinels]]:
    group = ReplicaGroup(tmp_path, "hot", replicas=1)
    sentinels = None
    try:
        sentinels = Sentinels(tmp_path, [group])
        yield group, sentinels
    finally:
        if sentinels is not None:
            sentinels.close()
        group.close()


@pytest.fixture
def plain_group(tmp_path: Path) -> Iterator[ReplicaGroup]:
    group = ReplicaGroup(tmp_path, "plain", replicas=1)
    try:
        yield group
    finally:
        group.close()


# -- the rule and the setting ---------------------------------------------------------------


def test_a_replica_is_fresh_until_max_lag_after_the_newest_check_it_had_reached() -> None:
    # (sent at, the master's offset then): the replica is read until max_lag after the
    # newest check whose offset it had applied, and not at all when behind every one.
    samples = deque([(10.0, 100), (10.25, 180), (10.5, 260)])
    assert fresh_until(samples, 260, 1.0) == 11.5  # caught up with the last check
    assert fresh_until(samples, 200, 1.0) == 11.25  # has what the master had at 10.25
    assert fresh_until(samples, 99, 1.0) == 0.0  # behind everything remembered


@pytest.mark.parametrize(
    ("redis_options", "message"),
    [
        ({"urls": ["redis://h"], "replica_reads": ["history"]}, "must be one of state, cache"),
        ({"replica_reads": ["state"]}, "redis.replica_reads: needs Redis"),
        ({"urls": ["redis://h"], "replica_max_lag": 0}, "redis.replica_max_lag: must be >= 0.1"),
    ],
)
def test_a_bad_replica_reads_setting_is_refused_with_what_is_wrong(
    redis_options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict({"redis": redis_options})
    assert message in str(caught.value)


# -- Sentinel mode ----------------------------------------------------------------------------


@pytest.fixture
async def sentinel_store(sentinel_group: tuple[ReplicaGroup, Sentinels]) -> AsyncIterator[Store]:
    group, sentinels = sentinel_group
    store = await _open([sentinels.url(group)], replica_reads=ALL_KINDS, replica_max_lag=WIDE_LAG)
    try:
        await _replica_ready(store, "0")
        yield store
    finally:
        await store.close()


async def test_sentinel_hot_reads_are_served_by_the_replica_and_history_by_the_master(
    sentinel_group: tuple[ReplicaGroup, Sentinels], sentinel_store: Store
) -> None:
    group, _ = sentinel_group
    store = sentinel_store
    master, replica = group.servers[0].port, group.servers[1].port
    await store.state_put("shared", "doc", {"n": 1})
    await store.blobs.put("ab" * 16, b"cached reply", 60)
    record = KeyRecord(id="k1", tenant="t", secret_hash="h", name="n", scopes=("chat",))
    await store.keyring.create(record)
    sid = (await store.create_session()).id
    await store.append(sid, [{"role": "user", "content": "hi"}])
    # The replica has them all before the count starts (nothing is read stale here).
    await wait_until(lambda: _caught_up(master), what="the replica in sync")
    await _replica_ready(store, "0")
    before = {
        (port, cmd): _calls(port, cmd)
        for port in (master, replica)
        for cmd in ("hmget", "get", "hgetall", "evalsha")
    }
    for _ in range(20):
        assert (await store.state_get("shared", "doc")).value == {"n": 1}
        assert await store.blobs.get("ab" * 16) == b"cached reply"
        assert (await store.keyring.get("k1", replica=True)) == record
        assert len(await store.history(sid)) == 1

    def delta(port: int, cmd: str) -> int:
        return _calls(port, cmd) - before[(port, cmd)]

    assert (delta(replica, "hmget"), delta(master, "hmget")) == (20, 0)
    assert (delta(replica, "get"), delta(master, "get")) == (20, 0)
    assert (delta(replica, "hgetall"), delta(master, "hgetall")) == (20, 0)
    # History (and every script: sessions, turns, leases, jobs) stays on the master.
    assert (delta(replica, "evalsha"), delta(master, "evalsha")) == (0, 20)
    # A key look-up that is not a refresh (an unknown or changed id) reads the master.
    await store.keyring.get("k1")
    assert delta(master, "hgetall") == 1


async def test_a_stopped_replica_falls_back_to_the_master_with_no_failed_read(
    sentinel_group: tuple[ReplicaGroup, Sentinels],
) -> None:
    group, sentinels = sentinel_group
    # Checks every 15 s: the replica is still thought fresh when it is stopped, so the
    # reads below meet it stopped (and fall back), rather than a check finding it first.
    store = await _open([sentinels.url(group)], replica_reads=["state"], replica_max_lag=60.0)
    try:
        await store.state_put("shared", "doc", {"n": 1})
        await wait_until(
            lambda: redis.Redis(port=group.servers[1].port).hget(state_key("shared/doc"), "ver")
        )
        await _replica_ready(store, "0")
        replicas = store.shards.replicas  # type: ignore[attr-defined]
        group.servers[1].proc.send_signal(signal.SIGSTOP)  # hangs: each read must time out
        try:
            master_before = _calls(group.servers[0].port, "hmget")
            reads = await asyncio.gather(*(store.state_get("shared", "doc") for _ in range(10)))
        finally:
            group.servers[1].proc.send_signal(signal.SIGCONT)
        assert [r.value for r in reads] == [{"n": 1}] * 10
        assert replicas.fell_back == 10  # the ten were in flight on it together
        assert _calls(group.servers[0].port, "hmget") - master_before == 10
        # Once failed it is not read again until a check finds it fresh.
        group.kill(group.servers[1])
        assert (await store.state_get("shared", "doc")).value == {"n": 1}
        assert replicas.fell_back == 10
        assert replicas.pick("0") is None
    finally:
        await store.close()


async def test_after_a_failover_reads_go_to_the_replicas_of_the_new_master(
    tmp_path: Path,
) -> None:
    group = ReplicaGroup(tmp_path, "moving", replicas=2)
    sentinels = store = None
    try:
        sentinels = Sentinels(tmp_path, [group])
        store = await _open([sentinels.url(group)], replica_reads=["state"])
        await store.state_put("shared", "doc", {"n": 1})
        old = group.synced_master()  # both replicas have the document
        await _replica_ready(store, "0")
        group.kill(old)
        new = sentinels.wait_promotion(group, old, limit=60)
        (other,) = [s for s in group.alive() if s is not new]

        async def read_by_the_other() -> bool:
            before = _calls(other.port, "hmget")
            try:
                doc = await store.state_get("shared", "doc")
            except StoreUnavailable:
                return False  # the window: this shard's calls fail fast
            assert doc.value == {"n": 1}
            return _calls(other.port, "hmget") == before + 1

        # The new master's history is another one: its replica is read once it follows it.
        await wait_until(read_by_the_other, what="a read served by the new master's replica")

        # Writes go to the new master (once the shard's fail-fast pause after the window
        # is over), and its replica's reads catch up with them.
        async def put() -> int | None:
            try:
                return (await store.state_put("shared", "doc", {"n": 2})).version
            except StoreUnavailable:
                return None

        written = await wait_until(put, what="a write on the new master")

        async def caught_up() -> bool:
            return (await store.state_get("shared", "doc")).version == written

        await wait_until(caught_up, what="the new version read")
    finally:
        if store is not None:
            await store.close()
        if sentinels is not None:
            sentinels.close()
        group.close()


# -- the staleness rule --------------------------------------------------------------------------


async def test_a_replica_whose_link_is_down_is_not_read_and_is_again_once_caught_up(
    plain_group: ReplicaGroup,
) -> None:
    master, replica = plain_group.servers
    store = await _open([master.url], replica_reads=["state"], replica_max_lag=0.5)
    direct = redis.Redis(port=replica.port)
    try:
        await store.state_put("shared", "doc", {"n": 1})
        await wait_until(lambda: direct.hget(state_key("shared/doc"), "ver") == b"1")
        await _replica_ready(store, "0")
        # Cut the replica off its master: it keeps serving its (now stale) data.
        direct.replicaof("127.0.0.1", free_port())
        replicas = store.shards.replicas  # type: ignore[attr-defined]
        await wait_until(lambda: replicas.pick("0") is None, what="the replica to be dropped")
        await store.state_put("shared", "doc", {"n": 2})
        before = _calls(replica.port, "hmget")
        for _ in range(20):
            assert (await store.state_get("shared", "doc")).value == {"n": 2}
        assert _calls(replica.port, "hmget") == before  # none were its
        assert direct.hget(state_key("shared/doc"), "ver") == b"1"  # it would have been stale
        # Linked again and caught up: read again, and up to date.
        direct.replicaof("127.0.0.1", master.port)

        async def read_by_the_replica() -> bool:
            before = _calls(replica.port, "hmget")
            assert (await store.state_get("shared", "doc")).value == {"n": 2}
            return _calls(replica.port, "hmget") == before + 1

        await wait_until(read_by_the_replica, what="the replica back, up to date")
    finally:
        direct.close()
        await store.close()


async def test_a_replica_linked_but_behind_by_more_than_the_bound_is_not_read(
    plain_group: ReplicaGroup,
) -> None:
    master, replica = plain_group.servers
    store = await _open([master.url], replica_reads=["state"], replica_max_lag=0.5)
    direct = redis.Redis(port=replica.port)
    try:
        await store.state_put("shared", "doc", {"n": 1})
        await wait_until(lambda: direct.hget(state_key("shared/doc"), "ver") == b"1")
        await _replica_ready(store, "0")
        # The replica stops applying its master's stream (its link stays up, and it
        # answers reads and INFO): from now on it falls behind.
        direct.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
        try:
            await store.state_put("shared", "doc", {"n": 2})
            with redis.Redis(port=replica.port) as probe:
                assert probe.info("replication")["master_link_status"] == "up"
            replicas = store.shards.replicas  # type: ignore[attr-defined]
            await wait_until(lambda: replicas.pick("0") is None, what="the replica dropped")
            before = _calls(replica.port, "hmget")
            for _ in range(20):
                assert (await store.state_get("shared", "doc")).value == {"n": 2}
            assert _calls(replica.port, "hmget") == before  # none were its
            assert direct.hget(state_key("shared/doc"), "ver") == b"1"  # it is behind
        finally:
            direct.execute_command("CLIENT", "UNPAUSE")
        await wait_until(lambda: replicas.pick("0") is not None, what="the replica back")
        assert (await store.state_get("shared", "doc")).value == {"n": 2}
    finally:
        direct.close()
        await store.close()


async def test_within_the_bound_a_replica_may_answer_an_older_version_never_a_404(
    plain_group: ReplicaGroup,
) -> None:
    master, replica = plain_group.servers
    # A bound of 60 s: the replica, paused below, stays readable for the whole test.
    store = await _open([master.url], replica_reads=["state"], replica_max_lag=60.0)
    direct = redis.Redis(port=replica.port)
    try:
        await store.state_put("shared", "doc", {"n": 1})
        await wait_until(lambda: direct.hget(state_key("shared/doc"), "ver") == b"1")
        await _replica_ready(store, "0")
        direct.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")  # it falls behind
        try:
            await store.state_put("shared", "doc", {"n": 2})
            await store.state_put("shared", "new", {"fresh": True})
            counts = _calls(master.port, "hmget"), _calls(replica.port, "hmget")
            # The same client's write is not seen yet: the documented read-your-writes gap.
            assert (await store.state_get("shared", "doc")).version == 1
            # A document the replica does not have yet is asked of the master.
            assert (await store.state_get("shared", "new")).value == {"fresh": True}
            assert _calls(master.port, "hmget") == counts[0] + 1
            assert _calls(replica.port, "hmget") == counts[1] + 2
            with pytest.raises(NotFound):  # absent on both
                await store.state_get("shared", "never")
        finally:
            direct.execute_command("CLIENT", "UNPAUSE")
    finally:
        direct.close()
        await store.close()


async def test_a_conditional_write_checks_the_master_whatever_a_replica_said(
    plain_group: ReplicaGroup,
) -> None:
    master, replica = plain_group.servers
    store = await _open([master.url], replica_reads=["state"])
    direct = redis.Redis(port=replica.port)
    try:
        await store.state_put("shared", "doc", {"n": 1})
        await wait_until(lambda: direct.hget(state_key("shared/doc"), "ver") == b"1")
        await _replica_ready(store, "0")
        seen = await store.state_get("shared", "doc")
        await store.state_put("shared", "doc", {"n": 2})  # another writer, meanwhile
        with pytest.raises(StateConflict) as caught:
            await store.state_put("shared", "doc", {"n": 3}, expected_version=seen.version)
        assert caught.value.current is not None and caught.value.current.version == 2
        # A patch reads the master: it applies to the newest version however far behind
        # a replica is.
        patched = await store.state_patch("shared", "doc", {"m": 1})
        assert (patched.value, patched.version) == ({"n": 2, "m": 1}, 3)
    finally:
        direct.close()
        await store.close()
