"""Sharded mode over Sentinel groups: ``redis+sentinel://`` URLs, and a master killed
under mixed load (chat turns, WebSocket watchers, background jobs) followed with no
restart. The servers, sentinels and ``agentd serve`` instances are real processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from agentd.config import ConfigError, from_dict, parse_sentinel_url
from agentd.errors import StoreUnavailable
from agentd.fastpath import SLOT_COUNT, key_slot
from agentd.store import open_store
from agentd.store.keys import session_keys

from .procs import AgentdProcess, RedisServer, fresh_connections
from .replication import ReplicaGroup, SentinelShards, two_sentinel_shards
from .store_helpers import collect_messages
from .waiting import pace, wait_until

Start = Callable[..., AgentdProcess]

REDIS_TIMEOUT_S = 1.0


@pytest.fixture
def sentinel_shards(tmp_path: Path) -> Iterator[SentinelShards]:
    with two_sentinel_shards(tmp_path) as shards:
        yield shards


def _config(urls: list[str]) -> str:
    listed = ", ".join(f'"{u}"' for u in urls)
    return f"""
[server]
workers = 2
shutdown_timeout = 2.0
[redis]
urls = [{listed}]
timeout = {REDIS_TIMEOUT_S}
down_retry = 0.5
[sessions]
turn_lease = 1.0
[jobs]
lease_s = 2.0
# An attempt that meets the failover counts: enough of them to span its window.
max_attempts = 6
[[backends]]
name = "echo"
type = "echo"
latency_ms = 5.0
"""


# -- the URL and its validation ----------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_and_the_group() -> None:
    url = "redis+sentinel://:s3cret@10.0.0.1:26380,10.0.0.2,[::1]:26381/orders/2"
    parsed = parse_sentinel_url(url + "?sentinel_password=pw")
    assert parsed.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381))
    assert (parsed.group, parsed.db, parsed.password) == ("orders", 2, "s3cret")
    assert parsed.sentinel_password == "pw"
    assert from_dict({"redis": {"urls": [url, url.replace("orders", "users")]}}).mode == "sharded"


@pytest.mark.parametrize(
    ("urls", "cluster", "message"),
    [
        (["redis+sentinel://h1:26379"], False, "names no group: add /<master name>"),
        (["redis+sentinel:///g"], False, "names no sentinel"),
        (["redis+sentinel://h1:x/g"], False, "bad sentinel port in 'h1:x'"),
        (["redis+sentinel://h1/g/db"], False, "path must be /<master name>[/<db number>]"),
        (["redis+sentinel://h1/g?timeout=1"], False, "unknown option(s) timeout"),
        (["redis+sentinel://h1/g", "redis+sentinel://h1:26379/g"], False, "listed twice"),
        (["redis+sentinel://h1/g"], True, "a Redis Cluster fails over by itself"),
    ],
)
def test_a_bad_sentinel_url_is_refused_with_what_is_wrong(
    urls: list[str], cluster: bool, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict({"redis": {"urls": urls, "cluster": cluster}})
    assert message in str(caught.value)


# -- real processes -----------------------------------------------------------------------


@pytest.mark.slow
def test_start_up_names_each_group_and_its_master(
    sentinel_shards: SentinelShards, agentd_instance: Start
) -> None:
    proc = agentd_instance(_config(sentinel_shards.urls))
    log = proc.log()
    ports = ",".join(f"127.0.0.1:{p}" for p in sentinel_shards.sentinels.ports)
    assert (
        f"store: sharded by hash slot over 2 shards: Sentinel group shard-a (sentinels {ports}), "
        f"Sentinel group shard-b (sentinels {ports})"
    ) in log
    for index, group in enumerate(sentinel_shards.groups):
        master = group.master().port
        assert (
            f"shard {index} (sentinel group {group.name} via {ports}): master 127.0.0.1:{master}"
            in log
        )


@pytest.mark.slow
async def test_a_watch_on_a_frozen_master_moves_to_the_new_one_unprompted(
    sentinel_shards: SentinelShards,
) -> None:
    """A worker whose only use of a shard is a watch (no request, no job, no readiness
    probe to find the new master) still moves its subscription off a frozen master: it
    asks the sentinels itself, every few seconds."""
    config = from_dict({"redis": {"urls": sentinel_shards.urls, "timeout": REDIS_TIMEOUT_S}})
    watcher, writer = open_store(config), open_store(config)
    await watcher.start()
    await writer.start()
    try:
        sid = (await writer.create_session()).id
        while _shard_of(sid, 2) != 0:
            sid = (await writer.create_session()).id
        async with aclosing(await watcher.open_watch(sid, after=0)) as events:
            first = await writer.append(sid, [{"role": "user", "content": "before"}])
            assert await collect_messages(events, sid, 1) == first
            group = sentinel_shards.groups[0]
            old = group.synced_master()
            old.proc.send_signal(signal.SIGSTOP)
            try:
                sentinel_shards.sentinels.wait_promotion(group, old, 30)

                async def append() -> list[dict[str, Any]] | None:
                    with contextlib.suppress(StoreUnavailable):
                        return await writer.append(sid, [{"role": "user", "content": "after"}])
                    return None

                second = await wait_until(append, 30, "the writer to find the new master")
                # Generous: the move comes with the next question to the sentinels (5 s).
                async with asyncio.timeout(30):
                    event = await anext(events)
                assert event.messages == tuple(second)
            finally:
                old.proc.send_signal(signal.SIGCONT)
    finally:
        await watcher.close()
        await writer.close()


def _shard_of(sid: str, shards: int) -> int:
    return key_slot(session_keys(sid)[0]) * shards // SLOT_COUNT


@dataclass
class Load:
    """What the clients saw: every chat request with its shard, times and outcome."""

    sent: list[tuple[int, float, float, int, str]] = field(default_factory=list)
    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, shard: int, start: float, status: int, body: Any) -> None:
        code = "" if status == 200 else str(body.get("error", {}).get("code"))
        self.sent.append((shard, start, time.monotonic(), status, code))

    def failed(self, shard: int | None = None) -> list[tuple[int, float, float, int, str]]:
        return [r for r in self.sent if r[3] != 200 and (shard is None or r[0] == shard)]

    def ok_after(self, shard: int, moment: float) -> int:
        return sum(1 for r in self.sent if r[0] == shard and r[1] > moment and r[3] == 200)


async def _turns(
    http: aiohttp.ClientSession, urls: list[str], sid: str, shard: int, load: Load
) -> None:
    """One session's turns, one after another, alternating instances, until told to stop."""
    n = 0
    while not load.stop.is_set():
        text = f"{sid} turn {n}"
        body = {"model": "echo", "messages": [{"role": "user", "content": text}]}
        start = time.monotonic()
        # A hang would show as a client timeout: an error the test does not catch.
        async with http.post(
            urls[n % len(urls)] + "/v1/chat/completions",
            json={**body, "session_id": sid},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as reply:
            status, doc = reply.status, orjson.loads(await reply.read())
        load.record(shard, start, status, doc)
        if status == 200:
            load.acknowledged.setdefault(sid, []).append(text)
        else:
            assert (status, doc["error"]["code"]) == (503, "store_unavailable"), doc
            await pace(load.stop, 0.05)  # a client's pause before its next try
        n += 1


async def _watch(http: aiohttp.ClientSession, url: str, sid: str, seen: list[int]) -> None:
    """A WebSocket watcher of ``sid``: the sequence numbers of every message it is sent."""
    async with http.ws_connect(url + "/v1/ws", heartbeat=None) as ws:
        await ws.send_json({"type": "hello", "session_id": sid, "after": 0})
        async for frame in ws:
            doc = orjson.loads(frame.data)
            if doc["type"] == "event" and "seq" in doc:
                seen.append(doc["seq"])
            elif doc["type"] == "error":
                raise AssertionError(f"watcher of {sid}: {doc}")


async def _history(http: aiohttp.ClientSession, url: str, sid: str) -> list[dict[str, Any]]:
    """The stored messages, read again (as a client would) on a 503: a worker that met
    the failover late may still fail its shard fast for up to redis.down_retry."""

    async def read() -> list[dict[str, Any]] | None:
        async with http.get(f"{url}/v1/sessions/{sid}/messages?limit=1000&order=asc") as r:
            doc = orjson.loads(await r.read())
            if r.status == 503:
                assert doc["error"]["code"] == "store_unavailable", doc
                return None
            assert r.status == 200, doc
            return list(doc["data"])

    return await wait_until(read, 30, f"the history of {sid}")


async def _submit_job(http: aiohttp.ClientSession, url: str, text: str) -> str:
    """A background response, submitted again on 503 until accepted."""

    async def submit() -> str | None:
        body = {"model": "echo", "input": text, "background": True}
        async with http.post(url + "/v1/responses", json=body) as reply:
            doc = orjson.loads(await reply.read())
            if reply.status == 200:
                return str(doc["id"])
            assert (reply.status, doc["error"]["code"]) == (503, "store_unavailable"), doc
            return None

    return str(await wait_until(submit, 30, f"{text!r} to be accepted", poll_s=0.1))


async def _job_status(http: aiohttp.ClientSession, url: str, job: str) -> str:
    async with http.get(f"{url}/v1/responses/{job}") as reply:
        if reply.status != 200:
            return f"http {reply.status}"
        return str(orjson.loads(await reply.read())["status"])


async def _readyz(
    http: aiohttp.ClientSession, url: str, seen: list[tuple[float, int, str]],
    stop: asyncio.Event,
) -> None:  # fmt: skip
    """/readyz polled ten times a second until ``stop``: when it answered, its status and
    reasons."""
    while not stop.is_set():
        async with http.get(url + "/readyz") as reply:
            doc = orjson.loads(await reply.read())
            seen.append((time.monotonic(), reply.status, "; ".join(doc.get("reasons", []))))
        await pace(stop, 0.1)


@dataclass
class Outcome:
    """What one failover under load did, for the assertions and the report."""

    load: Load
    killed_at: float
    promoted_at: float
    readyz: list[tuple[float, int, str]]
    jobs: int
    old: int
    new: int

    def report(self, what: str, victim: int) -> str:
        failed = self.load.failed(victim)
        window = (max(r[2] for r in failed) - self.killed_at) if failed else 0.0
        down = [t - self.killed_at for t, status, _ in self.readyz if status != 200]
        return (
            f"\nsentinel failover ({what}): {len(self.load.sent)} chat requests sent, "
            f"{len(self.load.failed())} failed (503 store_unavailable), "
            f"{len(self.load.failed(1 - victim))} of them on the other shard; window "
            f"{window:.2f}s from the fault to the last failure (promotion seen "
            f"{self.promoted_at - self.killed_at:.2f}s after it); slowest failed request "
            f"{max((r[2] - r[1] for r in failed), default=0.0):.2f}s; /readyz 503 in "
            f"{len(down)} polls, from {min(down, default=0):.2f}s to "
            f"{max(down, default=0):.2f}s; {self.jobs} jobs completed; "
            f"master {self.old} -> {self.new}"
        )


async def _failover_under_load(
    instances: list[AgentdProcess],
    shards: SentinelShards,
    victim: int,
    fault: Callable[[ReplicaGroup, RedisServer], None],
) -> Outcome:
    """Chat turns on six sessions (three per shard) through both instances, a WebSocket
    watcher on each, background jobs; ``fault`` hits the victim shard's master once every
    watcher has seen a few messages. Returns once the victim's sessions take turns again
    and every watcher, turn and job is accounted for."""
    urls = [p.url for p in instances]
    load = Load()
    async with fresh_connections() as http, aiohttp.ClientSession() as ws_http:
        sessions: dict[int, list[str]] = {0: [], 1: []}
        while min(len(s) for s in sessions.values()) < 3:
            async with http.post(urls[0] + "/v1/sessions", json={}) as r:
                sid = orjson.loads(await r.read())["id"]
            if len(sessions[_shard_of(sid, 2)]) < 3:
                sessions[_shard_of(sid, 2)].append(sid)
        seen: dict[str, list[int]] = {sid: [] for ids in sessions.values() for sid in ids}
        watchers = [
            asyncio.create_task(_watch(ws_http, urls[i % 2], sid, seen[sid]))
            for i, sid in enumerate(seen)
        ]
        turns = [
            asyncio.create_task(_turns(http, urls, sid, shard, load))
            for shard, ids in sessions.items()
            for sid in ids
        ]
        readyz: list[tuple[float, int, str]] = []
        polled = asyncio.Event()
        poller = asyncio.create_task(_readyz(http, urls[1], readyz, polled))
        jobs = [await _submit_job(http, urls[i % 2], f"job {i} before") for i in range(4)]

        await wait_until(lambda: all(len(s) >= 4 for s in seen.values()), 30, "watchers")
        group = shards.groups[victim]
        old = group.synced_master()
        killed_at = time.monotonic()
        fault(group, old)
        jobs += [await _submit_job(http, urls[i % 2], f"job {i} during") for i in range(4)]
        new = shards.sentinels.wait_promotion(group, old, 30)
        promoted_at = time.monotonic()
        # The load goes on until the victim's sessions have had turns stored again.
        await wait_until(lambda: load.ok_after(victim, promoted_at) >= 12, 30, "turns again")
        load.stop.set()
        await wait_until(lambda: all(t.done() for t in turns), 30, "the turns to stop")
        for task in turns:
            task.result()  # a turn that failed otherwise than with 503 fails the test here

        # Watchers: every stored message, once, in order; nothing acknowledged was lost.
        for sid in seen:
            history = await _history(http, urls[0], sid)
            stored = [m["seq"] for m in history]
            assert stored == list(range(1, len(stored) + 1))
            count = len(stored)
            await wait_until(lambda sid=sid, n=count: len(seen[sid]) >= n, 30, "the watcher")
            assert seen[sid] == stored, sid
            contents = [m["content"] for m in history if m["role"] == "user"]
            assert contents == load.acknowledged.get(sid, []), sid

        for job in jobs:
            await wait_until(
                lambda job=job: _job_status_is(http, urls[0], job, "completed"), 60, job
            )
        await wait_until(lambda: _ready(http, urls), 30, "/readyz 200 on both instances")
        polled.set()
        await poller
        for task in watchers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await task
    since = [poll for poll in readyz if poll[0] >= killed_at]
    return Outcome(load, killed_at, promoted_at, since, len(jobs), old.port, new.port)


def _kill(group: ReplicaGroup, master: RedisServer) -> None:
    group.kill(master)


def _freeze(group: ReplicaGroup, master: RedisServer) -> None:
    master.proc.send_signal(signal.SIGSTOP)


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "what"), [(_kill, "kill -9"), (_freeze, "SIGSTOP")])
async def test_a_master_lost_under_load_is_followed_without_restart(
    sentinel_shards: SentinelShards,
    agentd_instance: Start,  # after the servers: stopped before them
    fault: Callable[[ReplicaGroup, RedisServer], None],
    what: str,
) -> None:
    """Killed, or frozen (its connections stay open, unanswered: a partition, where
    only agentd's own check moves the pub/sub connection off the old master)."""
    instances = [agentd_instance(_config(sentinel_shards.urls)) for _ in range(2)]
    workers = [p.worker_pids() for p in instances]
    victim = 0
    try:
        outcome = await _failover_under_load(instances, sentinel_shards, victim, fault)
    finally:
        for server in sentinel_shards.groups[victim].servers:
            server.proc.send_signal(signal.SIGCONT)  # a frozen one ends with the test
    print(outcome.report(what, victim))
    failed = outcome.load.failed(victim)
    assert failed, "the fault was noticed"
    assert not outcome.load.failed(1 - victim), "the other shard's sessions never fail"
    # Nothing waits on a lost master past redis.timeout (plus slack for a loaded machine):
    # after one call timed out, the shard's next calls fail fast.
    assert max(r[2] - r[1] for r in failed) < REDIS_TIMEOUT_S + 1.5
    # /readyz says which shard is down, and only that one.
    reasons = {reason for _, status, reason in outcome.readyz if status != 200}
    assert reasons, "/readyz noticed"
    for reason in reasons:
        assert reason.startswith("shard 0 (sentinel group shard-a via "), reason
        assert "shard 1" not in reason, reason
    for instance, pids in zip(instances, workers, strict=True):
        assert instance.proc.poll() is None
        assert instance.worker_pids() == pids, "no worker was restarted"
        assert f"master is now 127.0.0.1:{outcome.new}" in instance.log()
    if fault is _freeze:
        assert any("is on a former master; moving" in p.log() for p in instances)


async def _job_status_is(http: aiohttp.ClientSession, url: str, job: str, want: str) -> bool:
    status = await _job_status(http, url, job)
    assert status not in ("failed", "cancelled", "incomplete"), (job, status)
    return status == want


async def _ready(http: aiohttp.ClientSession, urls: list[str]) -> bool:
    for url in urls:
        async with http.get(url + "/readyz") as reply:
            if reply.status != 200:
                return False
    return True
