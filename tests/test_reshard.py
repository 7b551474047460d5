"""``agentd reshard``: adding a client-side shard online (docs/operations.md, "Adding a
shard"), on real redis-servers and real ``agentd serve`` instances."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from agentd.config import from_dict
from agentd.fastpath import key_slot
from agentd.reshard_cli import url_list
from agentd.store import Store, open_store
from agentd.store.keys import JOB_GROUP, queue_key
from agentd.store.redis.moving import CONTROL
from agentd.store.redis.reshard import Plan, ReshardError, begin, move, moving_slots

from .procs import ROOT, AgentdProcess, RedisServer, fresh_connections
from .waiting import wait_until


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Three fresh redis-servers: the first two are the old list, all three the new."""
    started = [RedisServer(tmp_path / f"r{i}") for i in range(3)]
    yield started
    for server in started:
        server.close()


def misplaced(servers: list[RedisServer], urls: list[str]) -> list[tuple[str, str]]:
    """Every (server, key) on a server that does not own the key's slot under ``urls``."""
    out = []
    for server in servers:
        with redis.Redis(port=server.port) as client:
            for key in client.scan_iter(count=1000):
                if urls[key_slot(key) * len(urls) // 16384] != server.url:
                    out.append((server.url, key.decode()))
    return out


def test_moving_slots_are_exactly_those_whose_owner_changes() -> None:
    old = ["redis://a", "redis://b"]
    new = [*old, "redis://c"]
    moving = moving_slots(old, new)
    for slot in range(16384):
        before, after = old[slot * 2 // 16384], new[slot * 3 // 16384]
        assert (slot in moving) == (before != after)
        if slot in moving:
            assert moving[slot] == (before, after)
    # a: 0-8191 -> 0-5461; b: 8192-16383 -> 5462-10922; c gets 10923-16383.
    assert len(moving) == (8192 - 5462) + (16384 - 10923)


async def _open(urls: list[str]) -> Store:
    store = open_store(from_dict({"redis": {"urls": urls}}))
    await store.start()
    return store


async def test_store_follows_a_reshard_and_the_move_is_resumable(
    servers: list[RedisServer],
) -> None:
    old = [s.url for s in servers[:2]]
    new = [s.url for s in servers]
    before = await _open(old)
    sids = [
        (await before.create_session(agent=f"agent{i % 2}", metadata={"n": i})).id
        for i in range(60)
    ]
    for sid in sids:
        await before.append(sid, [{"role": "user", "content": f"{sid} 1"}])
    for i in range(30):
        await before.state_put("ns", f"doc{i}", {"i": i})
    # A job queue stream with its consumer group and one delivery pending.
    jobs: Any = before.jobs
    streams = [queue_key("default", n) for n in range(8)]
    for n in range(8):
        await jobs.enqueue("default", n, f"job{n}", 100)
        await jobs.take("default", n, "worker-a", 1, 0.01)
        await jobs.enqueue("default", n, f"later{n}", 100)

    expected = {sid: [f"{sid} 1"] for sid in sids}
    plan = Plan(old, new)
    assert await begin(plan)
    after = await _open(new)  # an instance switched to the new list (SIGHUP)
    assert after.shards.moving is not None  # type: ignore[attr-defined]
    # Announced: both lists serve the moving slots from their old owner.
    for sid in sids[:30]:
        await after.append(sid, [{"role": "user", "content": f"{sid} 2"}])
        expected[sid].append(f"{sid} 2")
    for i in range(10):
        assert (await after.state_get("ns", f"doc{i}")).value == {"i": i}
        await after.state_put("ns", f"doc{i}", {"i": i, "new": True})
    for sid in sids[30:]:
        await before.append(sid, [{"role": "user", "content": f"{sid} 2"}])
        expected[sid].append(f"{sid} 2")
    await before.close()

    # Pulling: the instance moves what it uses; the command the rest, stopped once.
    first = await move(plan, max_slots=10, announce_s=3.0)
    assert first.stopped and first.slots == 10
    assert (await plan.control.hlen(f"{CONTROL}:slots")) == 10
    for sid in sids[20:40]:
        await after.append(sid, [{"role": "user", "content": f"{sid} 3"}])
        expected[sid].append(f"{sid} 3")
    second = await move(Plan(old, new))
    assert not second.stopped and second.slots > 0 and not second.kept
    await plan.close()

    assert misplaced(servers, new) == []
    for sid in sids:
        rows = await after.history(sid, after=0, limit=None)
        assert [m["content"] for m in rows] == expected[sid]
        assert [m["seq"] for m in rows] == list(range(1, len(expected[sid]) + 1))
    for i in range(30):
        doc = await after.state_get("ns", f"doc{i}")
        assert doc.value == ({"i": i, "new": True} if i < 10 else {"i": i})
    page = await after.list_sessions(limit=1000)
    assert sorted(s.id for s in page.sessions) == sorted(sids)
    # An agent's index is rebuilt like the sessions' (its entries on their new shard).
    page = await after.list_sessions(limit=1000, agent="agent1")
    assert sorted(s.id for s in page.sessions) == sorted(sids[1::2])
    # DUMP/RESTORE carries a stream's consumer group and its pending entries.
    for stream in streams:
        owner = new[key_slot(stream) * 3 // 16384]
        with redis.Redis.from_url(owner) as client:
            (group,) = client.xinfo_groups(stream)
            assert group["name"].decode() == JOB_GROUP and group["pending"] == 1
            assert client.xlen(stream) == 2
    # The reshard has ended: the instance stops following it.
    shards: Any = after.shards  # type: ignore[attr-defined]
    await shards.follow_reshard()
    assert shards.moving is None
    await after.close()


# -- real instances under load ---------------------------------------------------------


def _config(urls: list[str]) -> str:
    quoted = ", ".join(f'"{u}"' for u in urls)
    return f"""
[server]
workers = 2

[redis]
urls = [{quoted}]

[sessions]
max_messages = 100000  # every message stays: the test reads whole histories

[[backends]]
name = "slow"
type = "echo"
tokens_per_s = 10

[[agents]]
name = "slow"
backend = "slow"
"""


async def _reshard(config: Path, urls: list[str], *args: str) -> tuple[int, str]:
    """Run ``agentd reshard`` (without blocking the load): (exit code, its output)."""
    cmd = ["-m", "agentd", "reshard", "-c", str(config), "--to", ",".join(urls), *args]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *cmd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


class Load:
    """Appends to sessions through every instance, round robin, until stopped; keeps
    what each acknowledged."""

    def __init__(self, urls: list[str], sids: list[str]) -> None:
        self.urls, self.sids = urls, sids
        self.acked: dict[str, list[str]] = {sid: [] for sid in sids}
        self.sent = self.failed = 0
        self.errors: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def run(self, http: aiohttp.ClientSession, lane: int) -> None:
        n = 0
        while not self.stop.is_set() and n < 50_000:
            sid = self.sids[(lane + n * 7) % len(self.sids)]
            url = self.urls[n % len(self.urls)]
            text = f"{lane}-{n}"
            n += 1
            self.sent += 1
            try:
                async with http.post(
                    f"{url}/v1/sessions/{sid}/messages",
                    json={"messages": [{"role": "user", "content": text}]},
                ) as resp:
                    if resp.status == 201:
                        self.acked[sid].append(text)
                        continue
                    error = f"{resp.status} {await resp.text()}"[:200]
            except aiohttp.ClientError as exc:
                error = repr(exc)
            self.failed += 1
            self.errors[error] = self.errors.get(error, 0) + 1


class Watcher:
    """An SSE watcher of one session: the seqs of the messages it was sent. Like a real
    client it resumes after the last seq it got when its stream ends."""

    def __init__(self, http: aiohttp.ClientSession, url: str, sid: str, after: int) -> None:
        self.after = after
        self.seqs: list[int] = []
        self.ends: list[str] = []  # why each stream ended (its error event, if any)
        self.task = asyncio.create_task(self._run(http, f"{url}/v1/sessions/{sid}/events"))

    async def _run(self, http: aiohttp.ClientSession, url: str) -> None:
        while len(self.ends) < 20:
            last = self.seqs[-1] if self.seqs else self.after
            error = "ended"
            async with http.get(url, params={"after": str(last)}) as resp:
                assert resp.status == 200
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        event = json.loads(line[6:])
                        self.seqs += [m["seq"] for m in event.get("messages", ())]
                        if "error" in event:
                            error = str(event["error"])
            self.ends.append(error)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _warnings(instances: list[AgentdProcess]) -> list[str]:
    """The instances' warnings and errors, and when they switched (to explain a failure)."""
    lines = [line for p in instances for line in p.log().splitlines()]
    keep = ("WARNING", "ERROR", "serve the moving", "ended")
    return [line for line in lines if any(k in line for k in keep) and "auth: OPEN" not in line]


def _reloaded(proc: AgentdProcess, workers_before: set[int]) -> bool:
    return "reload complete: generation 2" in proc.log() and not (
        proc.worker_pids() & workers_before
    )


async def test_reshard_two_to_three_shards_under_load(
    servers: list[RedisServer], agentd_instance: Any, tmp_path: Path
) -> None:
    old = [s.url for s in servers[:2]]
    new = [s.url for s in servers]
    instances = [agentd_instance(_config(old)) for _ in range(2)]
    urls = [p.url for p in instances]
    async with fresh_connections() as http:

        async def post(path: str, body: Any, url: str = urls[0]) -> Any:
            async with http.post(url + path, json=body) as resp:
                assert resp.status in (200, 201), await resp.text()
                return await resp.json()

        async def get(path: str, url: str = urls[1]) -> tuple[int, Any]:
            async with http.get(url + path) as resp:
                return resp.status, await resp.json()

        sids = [(await post("/v1/sessions", {}))["id"] for _ in range(40)]
        # Sessions nobody touches during the reshard: moved by the command, not pulled.
        idle = [(await post("/v1/sessions", {}))["id"] for _ in range(150)]
        for sid in idle:
            message = {"role": "user", "content": sid}
            await post(f"/v1/sessions/{sid}/messages", {"messages": [message]})
        for i in range(20):
            async with http.put(f"{urls[0]}/v1/state/app/doc{i}", json={"i": i}) as resp:
                assert resp.status in (200, 201)
        # Background jobs that run across the reshard (about 12 s of tokens each).
        words = " ".join(f"w{i}" for i in range(120))
        job = {"model": "slow", "input": words, "background": True}
        jobs = [(await post("/v1/responses", job))["id"]]

        status, page = await get("/v1/sessions?limit=1000")
        listed_before = [s["id"] for s in page["data"]]
        assert set(listed_before) >= set(sids + idle)
        load = Load(urls, sids)
        lanes = [asyncio.create_task(load.run(http, lane)) for lane in range(4)]
        watchers: list[tuple[str, Watcher]] = []
        try:
            await _switch(load, instances, new)
            # Watchers of sessions that move, through the new list, across the move.
            moving = moving_slots(old, new)
            for sid in [s for s in sids if key_slot(s) in moving]:
                status, body = await get(f"/v1/sessions/{sid}/messages?limit=1")
                watchers.append((sid, Watcher(http, urls[0], sid, body["data"][-1]["seq"])))
            jobs.append((await post("/v1/responses", job))["id"])
            await _move(load, instances, new)
        finally:
            load.stop.set()
            await asyncio.gather(*lanes)
        print(f"\nreshard under load: {load.sent} appends sent, {load.failed} failed")
        assert load.failed == 0, load.errors
        for sid, watcher in watchers:
            status, body = await get(f"/v1/sessions/{sid}/messages?limit=1")
            assert status == 200, body
            last = body["data"][-1]["seq"]
            # Every watcher hears every message, those appended after the switch
            # included (the load goes on past the end of the move): in order, none
            # missed, none twice.
            try:
                await wait_until(lambda w=watcher, n=last: len(w.seqs) >= n - w.after, 30)  # type: ignore[misc]
            finally:
                await watcher.close()
                print(f"watcher of {sid}: {len(watcher.seqs)} of {last - watcher.after} live")
            assert watcher.seqs == list(range(watcher.after + 1, last + 1)), (sid, watcher.ends)
        assert misplaced(servers, new) == []
        for sid in sids:
            rows: list[Any] = []
            more = True
            while more:  # the whole history, page by page
                path = f"/v1/sessions/{sid}/messages?after={len(rows)}&limit=1000"
                status, body = await get(path)
                assert status == 200, body
                rows += body["data"]
                more = body["has_more"]
            contents = [m["content"] for m in rows]
            assert [m["seq"] for m in rows] == list(range(1, len(contents) + 1))
            # Every acknowledged append, once (lanes append to a session concurrently,
            # so the order of acknowledgements is not the order of the history).
            assert len(set(contents)) == len(contents)
            lost = set(load.acked[sid]) - set(contents)
            assert not lost, (sid, sorted(lost), _warnings(instances))
        for sid in idle:
            status, body = await get(f"/v1/sessions/{sid}/messages?after=0")
            assert [m["content"] for m in body["data"]] == [sid]
        for i in range(20):
            status, body = await get(f"/v1/state/app/doc{i}")
            assert (status, body["value"]) == (200, {"i": i})
        status, page = await get("/v1/sessions?limit=1000")
        listed = [s["id"] for s in page["data"]]
        # Every session once, and the second job's session (made after the first listing).
        assert set(listed) >= set(listed_before)
        assert len(listed) == len(set(listed)) == len(listed_before) + 1

        async def finished() -> bool:
            done = 0
            for rid in jobs:
                status, body = await get(f"/v1/responses/{rid}")
                assert status == 200, body
                assert body["status"] in ("queued", "in_progress", "completed"), body
                done += body["status"] == "completed"
            return done == len(jobs)

        await wait_until(finished, 60, "the background jobs to finish")
    assert load.failed == 0
    assert all(p.proc.poll() is None for p in instances)


async def _switch(load: Load, instances: list[AgentdProcess], new: list[str]) -> None:
    """Record the plan, then SIGHUP every instance onto the new list, under load."""
    await wait_until(lambda: load.sent > 200, 30, "load to start")
    begun = await _reshard(instances[0].config_path, new)
    assert begun[0] == 0, begun[1]
    for proc in instances:
        before = proc.worker_pids()
        proc.config_path.write_text(_config(new))
        proc.send(signal.SIGHUP)
        await wait_until(lambda p=proc, b=before: _reloaded(p, b), 60, "reload")  # type: ignore[misc]
        assert "[redis] urls changed to 3 server(s)" in proc.log()


async def _move(load: Load, instances: list[AgentdProcess], new: list[str]) -> None:
    """Move the keys: interrupted once (stopped after 25 slots), then run again."""
    config = instances[0].config_path
    stopped = await _reshard(config, new, "--move", "--max-slots", "25")
    assert stopped[0] == 3, stopped[1]
    with redis.Redis.from_url(new[0]) as control:
        assert control.hlen(f"{CONTROL}:slots") == 25
    sent = load.sent
    await wait_until(lambda: load.sent > sent + 300, 30, "more load")
    done = await _reshard(config, new, "--move")
    assert done[0] == 0, done[1]
    assert "written on both shards" not in done[1]
    print(f"\n{stopped[1]}{done[1]}")
    sent = load.sent
    await wait_until(lambda: load.sent > sent + 300, 30, "load after the move")


async def test_every_worker_switches_at_the_recorded_moment(
    servers: list[RedisServer],
) -> None:
    old = [s.url for s in servers[:2]]
    new = [s.url for s in servers]
    moving = moving_slots(old, new)
    plan = Plan(old, new)
    await begin(plan)
    one, two = await _open(new), await _open(new)
    sids = []
    while len(sids) < 5:  # sessions of slots that move, made before the switch
        sid = (await one.create_session()).id
        if key_slot(sid) in moving:
            sids.append(sid)

    def holders(sid: str) -> list[str]:
        meta = f"agentd:s:{{{sid}}}:meta"
        return [s.url for s in servers if redis.Redis(port=s.port).exists(meta)]

    assert all(holders(sid) == [moving[key_slot(sid)][0]] for sid in sids)
    # Announced for 3 s: both workers learn the moment (they look every 2 s).
    stopped = await move(plan, max_slots=0, announce_s=3.0)
    assert stopped.stopped and stopped.slots == 0
    await plan.close()
    for worker in (one, two):
        assert worker.shards.moving.pulling()  # type: ignore[attr-defined]
    for n in range(4):
        for sid in sids:
            await (one if n % 2 else two).append(sid, [{"role": "user", "content": str(n)}])
    for sid in sids:
        assert holders(sid) == [moving[key_slot(sid)][1]]
        rows = await two.history(sid, after=0, limit=None)
        assert [(m["seq"], m["content"]) for m in rows] == [(n + 1, str(n)) for n in range(4)]
    await one.close()
    await two.close()


async def test_move_refuses_while_a_worker_serves_the_old_list(
    servers: list[RedisServer],
) -> None:
    old = [s.url for s in servers[:2]]
    new = [s.url for s in servers]
    plan = Plan(old, new)
    await begin(plan)
    stale = await _open(old)  # started on the old list after the plan was recorded
    assert stale.shards.moving is not None  # type: ignore[attr-defined]
    with pytest.raises(ReshardError, match="1 worker"):
        await move(plan)
    await stale.close()  # its heartbeat goes with it
    report = await move(plan, announce_s=0.1)
    assert not report.stopped
    await plan.close()


def test_to_takes_sentinel_urls_whose_sentinels_are_comma_separated() -> None:
    text = "redis://a:1, redis+sentinel://h:1,h:2/shard-c,redis+sentinel://h:1,h:2/shard-d"
    assert url_list(text) == [
        "redis://a:1",
        "redis+sentinel://h:1,h:2/shard-c",
        "redis+sentinel://h:1,h:2/shard-d",
    ]


async def test_a_bad_to_list_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    config = tmp_path / "agentd.toml"
    config.write_text('[redis]\nurls = ["redis://127.0.0.1:1", "redis://127.0.0.1:2"]\n')
    code, out = await _reshard(config, ["redis://127.0.0.1:1", "redis+sentinel://h:1"])
    assert code == 2, out
    assert "agentd reshard: --to: " in out and "names no group" in out
