"""Durable acknowledgements (``redis.wait_replicas``) against a real master and replica:
what agentd acknowledges is on the replica when the answer arrives, a replica that does
not confirm in time gives 503 ``store_not_durable`` (never a hang), and a master killed
right after acknowledgements loses none of them once its replica is promoted."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from agentd.config import ConfigError, from_dict
from agentd.errors import StoreNotDurable
from agentd.fastpath import key_slot
from agentd.store import open_store
from agentd.store.keys import record_keys, session_keys, state_key

from .chat_helpers import chat_body
from .procs import AgentdProcess, RedisClusterProcs, RedisServer, metric
from .waitrepl_procs import ReplicatedCluster, ReplicatedRedis

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]

TIMED_OUT = 'agentd_store_waits_total{outcome="timed_out"}'
CONFIRMED = 'agentd_store_waits_total{outcome="confirmed"}'


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[ReplicatedRedis]:
    redis_pair = ReplicatedRedis(tmp_path / "pair")
    yield redis_pair
    redis_pair.close()


def _config(url: str, wait_replicas: int, workers: int = 1, wait_timeout_ms: int = 300) -> str:
    return (
        f"[server]\nworkers = {workers}\nshutdown_timeout = 5.0\n"
        f'[redis]\nurls = ["{url}"]\ntimeout = 2.0\ndown_retry = 0.2\n'
        f"wait_replicas = {wait_replicas}\nwait_timeout_ms = {wait_timeout_ms}\n"
    )


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    async with http.request(method, url, json=body, **kw) as r:
        return r.status, orjson.loads(await r.read())


def _messages(server: redis.Redis, sid: str) -> list[dict[str, Any]]:
    """A session's stored messages (with their seq, the entry id), read straight from
    one server."""
    return [
        {**orjson.loads(fields[b"m"]), "seq": int(entry.split(b"-")[0])}
        for entry, fields in server.xrange(session_keys(sid)[1])
    ]


def _waits(server: RedisServer) -> int:
    with redis.Redis(port=server.port) as client:
        return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


# -- the setting ----------------------------------------------------------------------


def test_config_refuses_waits_it_cannot_keep() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"redis": {"wait_replicas": 1}})
    assert "redis.wait_replicas: needs Redis" in str(info.value)
    with pytest.raises(ConfigError) as info:
        from_dict({"redis": {"urls": ["redis://h"], "wait_replicas": 1, "wait_timeout_ms": 2000}})
    assert "redis.wait_timeout_ms: must be below redis.timeout (2000 ms)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        from_dict({"redis": {"urls": ["redis://h"], "wait_local_aof": True}})
    assert "redis.wait_local_aof: needs redis.wait_aof = true" in str(info.value)
    config = from_dict({"redis": {"urls": ["redis://h"], "wait_replicas": 2}})
    assert (config.redis.wait_replicas, config.redis.wait_timeout_ms) == (2, 500)


# -- acknowledged means replicated ------------------------------------------------------


async def test_acknowledged_writes_are_on_the_replica_when_answered(
    pair: ReplicatedRedis, agentd_instance: Start
) -> None:
    proc = agentd_instance(_config(pair.master.url, wait_replicas=1, workers=2))
    replica = pair.client(pair.replica)
    waits_before = _waits(pair.master)
    async with aiohttp.ClientSession() as http:
        status, session = await _call(http, "POST", proc.url + "/v1/sessions", {})
        assert status == 201, session
        sid = session["id"]
        assert replica.exists(session_keys(sid)[0])

        msgs = {"messages": [{"role": "user", "content": "appended"}]}
        status, body = await _call(http, "POST", f"{proc.url}/v1/sessions/{sid}/messages", msgs)
        assert status == 201, body
        assert [m["content"] for m in _messages(replica, sid)] == ["appended"]

        for i in range(5):
            body = chat_body(f"turn {i}", session_id=sid)
            status, body = await _call(http, "POST", proc.url + "/v1/chat/completions", body)
            assert status == 200, body
            # Read the replica the moment the answer is here: the turn is already there.
            stored = _messages(replica, sid)
            assert stored[-2]["content"] == f"turn {i}", stored
            assert stored[-1]["role"] == "assistant" and stored[-1]["seq"] == 3 + 2 * i

        status, body = await _call(http, "PUT", proc.url + "/v1/state/app/doc", {"n": 1})
        assert status in (200, 201), body
        value, version = replica.hmget(state_key("app/doc"), "v", "ver")
        assert orjson.loads(value) == {"n": 1} and int(version) == body["version"]

        job = {"model": "echo", "input": "in the background", "background": True}
        status, body = await _call(http, "POST", proc.url + "/v1/responses", job)
        assert status == 200, body
        assert replica.hget(record_keys(body["id"])[0], "status") is not None

    # Every acknowledged write sent its WAIT (the session create, the append, 5 turns, the
    # state write, the record and the job): nothing was acknowledged unconfirmed.
    assert _waits(pair.master) - waits_before >= 10
    assert metric(proc, CONFIRMED) is not None and metric(proc, CONFIRMED) >= 10
    replica.close()


async def test_without_wait_replicas_no_write_waits(
    pair: ReplicatedRedis, agentd_instance: Start
) -> None:
    proc = agentd_instance(_config(pair.master.url, wait_replicas=0))
    waits_before = _waits(pair.master)  # the harness's own probes
    async with aiohttp.ClientSession() as http:
        status, session = await _call(http, "POST", proc.url + "/v1/sessions", {})
        assert status == 201
        body = chat_body("hi", session_id=session["id"])
        status, _ = await _call(http, "POST", proc.url + "/v1/chat/completions", body)
        assert status == 200
    assert _waits(pair.master) == waits_before
    assert metric(proc, CONFIRMED) is None


async def test_a_replica_that_does_not_confirm_gives_503_store_not_durable(
    pair: ReplicatedRedis, agentd_instance: Start
) -> None:
    proc = agentd_instance(_config(pair.master.url, wait_replicas=1, wait_timeout_ms=300))
    master = pair.client(pair.master)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        status, session = await _call(http, "POST", proc.url + "/v1/sessions", {})
        assert status == 201
        sid = session["id"]
        pair.pause_replica()
        try:
            started = time.monotonic()
            body = chat_body("unconfirmed", session_id=sid)
            status, answer = await _call(http, "POST", proc.url + "/v1/chat/completions", body)
            assert status == 503, answer
            assert answer["error"]["code"] == "store_not_durable"
            assert (
                "0 of 1 replica(s) confirmed the write within 300 ms" in answer["error"]["message"]
            )
            status, answer = await _call(http, "PUT", proc.url + "/v1/state/app/doc", {"n": 2})
            assert (status, answer["error"]["code"]) == (503, "store_not_durable")
            # Answered by the wait's timeout, not by a hung request or a socket timeout
            # (redis.timeout, 2 s, would have made it store_unavailable).
            assert time.monotonic() - started < 10
            # The documented rule: the master applied them; they are not undone.
            assert [m["content"] for m in _messages(master, sid)][-2] == "unconfirmed"
            assert master.hget(state_key("app/doc"), "ver") == b"1"
            assert metric(proc, TIMED_OUT) == 2
            assert "write not confirmed durable" in proc.log()
        finally:
            pair.resume_replica()
        # The replica confirms again: the session is free (the failed turn's lease went
        # with its write) and the next turn is acknowledged.
        body = chat_body("confirmed", session_id=sid)
        status, answer = await _call(http, "POST", proc.url + "/v1/chat/completions", body)
        assert status == 200, answer
        with pair.client(pair.replica) as replica:
            assert [m["content"] for m in _messages(replica, sid)][-2] == "confirmed"
    master.close()


async def test_waitaof_where_the_server_has_it(tmp_path: Path) -> None:
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    redis_pair = ReplicatedRedis(tmp_path / "aof", *aof)
    try:
        config = {"urls": [redis_pair.master.url], "wait_replicas": 1, "wait_aof": True}
        store = open_store(from_dict({"redis": {**config, "wait_local_aof": True}}))
        await store.start()
        with redis_pair.client(redis_pair.master) as master:
            version = master.info("server")["redis_version"]
        known = tuple(int(x) for x in version.split(".")[:2]) >= (7, 2)
        try:
            if known:  # Redis >= 7.2: the master's and the replica's AOF have it
                assert (await store.state_put("ns", "aof", 1)).version == 1
            else:  # before 7.2: the write is applied, never acknowledged as durable
                with pytest.raises(StoreNotDurable, match=r"WAITAOF needs Redis >= 7\.2"):
                    await store.state_put("ns", "aof", 1)
                with redis_pair.client(redis_pair.master) as master:
                    assert master.hget(state_key("ns/aof"), "ver") == b"1"
        finally:
            await store.close()
    finally:
        redis_pair.close()


async def test_in_a_cluster_the_wait_goes_to_the_node_that_took_the_write(
    redis_cluster: RedisClusterProcs,
) -> None:
    # A cluster without replicas: each wait times out, on the key's own node only.
    raw = {"urls": redis_cluster.urls, "cluster": True, "wait_replicas": 1}
    store = open_store(from_dict({"redis": {**raw, "wait_timeout_ms": 100}}))
    await store.start()
    try:
        names = [f"doc{i}" for i in range(6)]
        for name in names:  # (a node's first write also loads the script: EVAL after NOSCRIPT)
            with pytest.raises(StoreNotDurable, match="0 of 1 replica"):
                await store.state_put("ns", name, 1)
        before = [_waits(node) for node in redis_cluster.nodes]
        for name in names:
            with pytest.raises(StoreNotDurable, match="0 of 1 replica"):
                await store.state_put("ns", name, 2)
        waits = [_waits(node) - b for node, b in zip(redis_cluster.nodes, before, strict=True)]
        owners = []  # the documents each node holds (one key each; the cluster was empty)
        for node in redis_cluster.nodes:
            with redis.Redis(port=node.port) as client:
                owners.append(int(client.dbsize()))
        assert waits == owners and sum(waits) == len(names)
    finally:
        await store.close()


# -- the loss window ------------------------------------------------------------------


class Load:
    """What a burst of chat turns got: the acknowledged turns' contents per session, the
    requests sent, and the error codes of the others."""

    def __init__(self) -> None:
        self.acked: dict[str, list[str]] = {}
        self.sent = 0
        self.errors: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(map(len, self.acked.values()))

    def missing_on(self, server: redis.Redis) -> int:
        """Acknowledged turns that ``server`` does not have."""
        missing = 0
        for sid, contents in self.acked.items():
            kept = {m["content"] for m in _messages(server, sid) if m["role"] == "user"}
            missing += sum(1 for c in contents if c not in kept)
        return missing


async def _turns_until_killed(
    proc: AgentdProcess,
    pair: ReplicatedRedis,
    sessions: int,
    kill_after: int,
    detach_after: int | None = None,
) -> Load:
    """Chat turns on ``sessions`` sessions at once; the master is killed (-9) the moment
    the ``kill_after``-th answer arrives, while the others are in flight (or when every
    client stopped at its first failure). ``detach_after``: the replica is cut off
    (promoted) after that many answers, as a replica that fell behind would be."""
    load = Load()
    killed = asyncio.Event()
    detached = False
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        for _ in range(sessions):
            status, session = await _call(http, "POST", proc.url + "/v1/sessions", {})
            assert status == 201, session
            load.acked[session["id"]] = []

        async def client(sid: str) -> None:
            nonlocal detached
            turn = 0
            while not killed.is_set():
                content = f"{sid} turn {turn}"
                load.sent += 1
                try:
                    body = chat_body(content, session_id=sid)
                    status, answer = await _call(
                        http, "POST", proc.url + "/v1/chat/completions", body
                    )
                except aiohttp.ClientError:
                    load.errors["disconnected"] = load.errors.get("disconnected", 0) + 1
                    return
                if status != 200:
                    code = answer["error"]["code"]
                    load.errors[code] = load.errors.get(code, 0) + 1
                    return
                load.acked[sid].append(content)
                turn += 1
                if detach_after is not None and load.total >= detach_after and not detached:
                    pair.promote_replica()
                    detached = True
                if load.total >= kill_after and not killed.is_set():
                    pair.kill_master()
                    killed.set()

        await asyncio.gather(*(client(sid) for sid in load.acked))
    if not killed.is_set():
        pair.kill_master()
    return load


def _report(what: str, wait_replicas: int, load: Load, missing: int) -> None:
    line = (
        f"{what} wait_replicas={wait_replicas}: {load.sent} turns sent, {load.total} "
        f"acknowledged, {missing} acknowledged turn(s) missing on the promoted replica, "
        f"other answers {load.errors}"
    )
    print("\n" + line)  # the figures docs/state.md quotes (pytest -s shows them)
    if os.environ.get("AGENTD_LOSS_REPORT"):
        with open(os.environ["AGENTD_LOSS_REPORT"], "a") as out:
            out.write(line + "\n")


@pytest.mark.parametrize("wait_replicas", [1, 0])
async def test_a_killed_master_loses_no_acknowledged_turn_with_wait_replicas(
    tmp_path: Path, agentd_instance: Start, wait_replicas: int
) -> None:
    redis_pair = ReplicatedRedis(tmp_path / "kill")
    try:
        proc = agentd_instance(_config(redis_pair.master.url, wait_replicas, workers=2))
        load = await _turns_until_killed(proc, redis_pair, sessions=16, kill_after=400)
        redis_pair.promote_replica()
        with redis_pair.client(redis_pair.replica) as replica:
            missing = load.missing_on(replica)
        _report("kill -9 under load:", wait_replicas, load, missing)
        assert load.total >= 400
        if wait_replicas:
            assert missing == 0
    finally:
        redis_pair.close()


@pytest.mark.parametrize("wait_replicas", [1, 0])
async def test_a_replica_behind_at_the_kill_loses_only_unacknowledged_turns(
    tmp_path: Path, agentd_instance: Start, wait_replicas: int
) -> None:
    """The window made visible: the replica stops receiving (cut off after 100 answers),
    the master carries on until killed, the replica is promoted. Without waits every
    turn acknowledged meanwhile is gone; with them, those turns were answered 503
    ``store_not_durable`` instead of 200, and no acknowledged turn is missing."""
    redis_pair = ReplicatedRedis(tmp_path / "behind")
    try:
        proc = agentd_instance(_config(redis_pair.master.url, wait_replicas, workers=2))
        load = await _turns_until_killed(
            proc, redis_pair, sessions=16, kill_after=300, detach_after=100
        )
        with redis_pair.client(redis_pair.replica) as replica:
            missing = load.missing_on(replica)
        _report("replica cut off, then kill -9:", wait_replicas, load, missing)
        if wait_replicas:
            assert missing == 0 and load.total < 300
            assert load.errors.get("store_not_durable", 0) > 0
        else:
            assert load.total >= 300 and missing > 0
    finally:
        redis_pair.close()


async def test_in_a_cluster_with_replicas_an_acknowledged_write_is_on_the_replica(
    tmp_path: Path,
) -> None:
    cluster = ReplicatedCluster(tmp_path / "cluster")
    try:
        raw = {"urls": cluster.urls, "cluster": True, "wait_replicas": 1}
        store = open_store(from_dict({"redis": {**raw, "wait_timeout_ms": 1000}}))
        await store.start()
        try:
            names = [f"doc{i}" for i in range(12)]
            for name in names:
                assert (await store.state_put("ns", name, {"name": name})).version == 1
            # Right after the acknowledgements: each document is on some replica (each
            # replica holds its own master's slots).
            _, replicas = cluster.roles()
            found = set()
            for node in replicas:
                with redis.Redis(port=node.port) as client:
                    client.execute_command("READONLY")
                    for name in names:
                        try:
                            if client.exists(state_key(f"ns/{name}")):
                                found.add(name)
                        except redis.exceptions.ResponseError:  # MOVED: another's slot
                            continue
            assert found == set(names)
            # Each new document sent two waits to masters, its own and its index entry's
            # (the namespace's listing, docs/state.md), each acknowledged as durably; a
            # master's first script call twice (EVAL after NOSCRIPT).
            masters, _ = cluster.roles()
            writes = 2 * len(names)
            assert writes <= sum(_waits(node) for node in masters) <= writes + 6
        finally:
            await store.close()
    finally:
        cluster.close()


def _node_id(node: RedisServer) -> str:
    with redis.Redis(port=node.port) as client:
        return client.execute_command("CLUSTER", "MYID").decode()


async def test_in_a_cluster_a_write_whose_slot_moved_is_sent_with_its_wait_to_the_new_owner(
    tmp_path: Path,
) -> None:
    cluster = ReplicatedCluster(tmp_path / "moved")
    try:
        raw = {"urls": cluster.urls, "cluster": True, "wait_replicas": 1}
        store = open_store(from_dict({"redis": {**raw, "wait_timeout_ms": 1000}}))
        await store.start()
        try:
            await store.state_put("ns", "first", 1)  # the client knows the slots now
            key = state_key("ns/moving")
            slot = key_slot(key)
            masters, _ = cluster.roles()
            owner = next(m for m in masters if _owns(m, slot))
            target = next(m for m in masters if m is not owner)
            # Hand the (empty) slot to another master behind the client's back.
            for node in (target, owner, *(m for m in masters if m not in (owner, target))):
                with redis.Redis(port=node.port) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", _node_id(target))
            before, moved = _waits(target), _moved(owner)
            # The pair goes to the old owner, gets MOVED, and goes again to the new one,
            # whose replica confirms it.
            assert (await store.state_put("ns", "moving", {"n": 1})).version == 1
            with redis.Redis(port=target.port) as client:
                assert client.hget(key, "ver") == b"1"
            assert _waits(target) > before and _moved(owner) == moved + 1
        finally:
            await store.close()
    finally:
        cluster.close()


def _moved(node: RedisServer) -> int:
    """The MOVED redirections ``node`` answered."""
    with redis.Redis(port=node.port) as client:
        return int(client.info("errorstats").get("errorstat_MOVED", {}).get("count", 0))


def _owns(node: RedisServer, slot: int) -> bool:
    with redis.Redis(port=node.port) as client:
        mine = _node_id(node)
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end and master[2].decode() == mine:
                return True
    return False
