"""Sharded mode over Sentinel groups: ``redis+sentinel://`` URLs, and a master killed
under mixed load (chat turns, WebSocket watchers, background jobs) followed with no
restart. The servers, sentinels and ``agentd serve`` instances are real processes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from agentd.config import ConfigError, from_dict, parse_sentinel_url
from agentd.fastpath import SLOT_COUNT, key_slot
from agentd.store.keys import session_keys

from .procs import AgentdProcess, fresh_connections
from .replication import ReplicaGroup, Sentinels
from .waiting import wait_until

Start = Callable[..., AgentdProcess]

REDIS_TIMEOUT_S = 1.0


@dataclass
class SentinelShards:
    groups: list[ReplicaGroup]
    sentinels: Sentinels

    @property
    def urls(self) -> list[str]:
        return [self.sentinels.url(g) for g in self.groups]


@pytest.fixture
def sentinel_shards(tmp_path: Path) -> Iterator[SentinelShards]:
    """Two shards, each a Sentinel group of a master and one replica, watched by three
    sentinels (``down-after-milliseconds`` 1000)."""
    groups: list[ReplicaGroup] = []
    sentinels = None
    try:
        groups = [ReplicaGroup(tmp_path, name) for name in ("shard-a", "shard-b")]
        sentinels = Sentinels(tmp_path, groups)
        yield SentinelShards(groups, sentinels)
    finally:
        if sentinels is not None:
            sentinels.close()
        for group in groups:
            group.close()


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


def test_start_up_names_each_group_and_its_master(
    agentd_instance: Start, sentinel_shards: SentinelShards
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
            await asyncio.sleep(0.05)  # a client's pause before its next try
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
    async with http.get(f"{url}/v1/sessions/{sid}/messages?limit=1000&order=asc") as r:
        assert r.status == 200
        return orjson.loads(await r.read())["data"]


async def _submit_job(http: aiohttp.ClientSession, url: str, text: str) -> str:
    """A background response, submitted again on 503 until accepted."""
    while True:
        body = {"model": "echo", "input": text, "background": True}
        async with http.post(url + "/v1/responses", json=body) as reply:
            doc = orjson.loads(await reply.read())
            if reply.status == 200:
                return str(doc["id"])
            assert (reply.status, doc["error"]["code"]) == (503, "store_unavailable"), doc
        await asyncio.sleep(0.1)


async def _job_status(http: aiohttp.ClientSession, url: str, job: str) -> str:
    async with http.get(f"{url}/v1/responses/{job}") as reply:
        if reply.status != 200:
            return f"http {reply.status}"
        return str(orjson.loads(await reply.read())["status"])


async def _readyz(http: aiohttp.ClientSession, url: str, seen: list[tuple[float, int]]) -> None:
    while True:
        async with http.get(url + "/readyz") as reply:
            seen.append((time.monotonic(), reply.status))
        await asyncio.sleep(0.1)


async def test_a_master_killed_under_load_is_followed_without_restart(
    agentd_instance: Start, sentinel_shards: SentinelShards
) -> None:
    instances = [agentd_instance(_config(sentinel_shards.urls)) for _ in range(2)]
    urls = [p.url for p in instances]
    workers = [p.worker_pids() for p in instances]
    victim = 0  # the shard whose master is killed
    load = Load()
    async with fresh_connections() as http, aiohttp.ClientSession() as ws_http:
        # Three sessions on each shard.
        sessions: dict[int, list[str]] = {0: [], 1: []}
        while min(len(s) for s in sessions.values()) < 3:
            async with http.post(urls[0] + "/v1/sessions", json={}) as r:
                sid = orjson.loads(await r.read())["id"]
            if len(sessions[_shard_of(sid, 2)]) < 3:
                sessions[_shard_of(sid, 2)].append(sid)
        seen: dict[str, list[int]] = {sid: [] for ids in sessions.values() for sid in ids}
        tasks = [
            asyncio.create_task(_watch(ws_http, urls[i % 2], sid, seen[sid]))
            for i, sid in enumerate(seen)
        ]
        tasks += [
            asyncio.create_task(_turns(http, urls, sid, shard, load))
            for shard, ids in sessions.items()
            for sid in ids
        ]
        readyz: list[tuple[float, int]] = []
        tasks.append(asyncio.create_task(_readyz(http, urls[1], readyz)))
        jobs = [await _submit_job(http, urls[i % 2], f"job {i} before") for i in range(4)]

        # Every session has turns stored, and every watcher has seen some, before the kill.
        await wait_until(lambda: all(len(s) >= 4 for s in seen.values()), 30, "watchers")
        group = sentinel_shards.groups[victim]
        old = group.synced_master()
        killed_at = time.monotonic()
        group.kill(old)
        jobs += [await _submit_job(http, urls[i % 2], f"job {i} during") for i in range(4)]
        new = sentinel_shards.sentinels.wait_promotion(group, old, 30)
        promoted_at = time.monotonic()
        # The load goes on until the victim's sessions have had turns stored again.
        await wait_until(lambda: load.ok_after(victim, promoted_at) >= 12, 30, "turns again")
        load.stop.set()
        await wait_until(
            lambda: all(t.done() for t in tasks[len(seen) : -1]), 30, "the turns to stop"
        )
        for task in tasks[len(seen) : -1]:
            task.result()  # a turn task that failed (a hang, a wrong error) fails here

        # Watchers: every stored message, once, in order; nothing acknowledged was lost.
        histories = {sid: await _history(http, urls[0], sid) for sid in seen}
        for sid, history in histories.items():
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
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await task

    failed = load.failed(victim)
    window = (max(r[2] for r in failed) - killed_at) if failed else 0.0
    not_ready = [t - killed_at for t, status in readyz if status != 200 and t >= killed_at]
    print(
        f"\nsentinel failover: {len(load.sent)} chat requests sent, "
        f"{len(load.failed())} failed (all 503 store_unavailable), all on the killed shard; "
        f"window {window:.2f}s from kill -9 (promotion seen at {promoted_at - killed_at:.2f}s); "
        f"slowest failure {max((r[2] - r[1] for r in failed), default=0.0):.2f}s; "
        f"/readyz 503 for {len(not_ready)} polls between "
        f"{min(not_ready, default=0):.2f}s and {max(not_ready, default=0):.2f}s; "
        f"{len(jobs)} jobs completed; master {old.port} -> {new.port}"
    )
    assert not load.failed(1 - victim), "the other shard's sessions never fail"
    assert failed, "the kill was noticed"
    for instance, pids in zip(instances, workers, strict=True):
        assert instance.proc.poll() is None
        assert instance.worker_pids() == pids, "no worker was restarted"
        assert "master is now 127.0.0.1:" in instance.log()


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
