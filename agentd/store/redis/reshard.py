"""``agentd reshard``: move the keys of the slots that change owner when the client-side
shards' URL list changes (see docs/operations.md, "Adding a shard").

Two runs, with every instance switched to the new list by SIGHUP between them:

1. ``begin`` (instances on the old list): records the plan (old list, new list) on the
   first server of both lists (phase ``announced``). A worker started on the new list
   (by the SIGHUP) finds it and still serves the moving slots from their old owner.
2. ``move`` (every instance reloaded): records a switch time a few RECHECK_S ahead and
   waits for it; from then on every worker serves the moving slots from the new owner,
   pulling each key from the old one at first use (:mod:`.moving`); the command moves
   every other key of a moving slot (see
   :func:`.moving.move_keys`), slot by slot, each slot recorded when done; then any key
   written on an old owner meanwhile, rebuilds the per-shard session indexes for the new
   list and deletes the plan, which tells the workers that the reshard has ended.

``move`` may be stopped (``--max-slots``, SIGINT, kill) and run again to go on: a slot
cut half-way is moved again, which is safe (moving a moved key finds nothing to move).

A list may name Sentinel groups: the command reaches each group's master as its
sentinels name it at each new connection, and tries a step that meets a failover again
(see :func:`connect`).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from ...config import SENTINEL_SCHEME, RedisConfig
from ...fastpath import SLOT_COUNT, key_slot
from .. import keys as K
from .moving import CONTROL, INDEX_MARK, QUEUE_MARK, RECHECK_S, move_keys, owner, replicated
from .sentinel import SentinelGroup, open_server
from .store import sharded_index_keys

__all__ = ("Plan", "Report", "ReshardError", "begin", "move", "moving_slots", "recorded_from")

SLOTS = f"{CONTROL}:slots"  # hash on the control server: slot -> "done"
# Every step is safe to repeat (see move_keys), so a step that meets a dropped connection
# is tried again, for long enough (about 10 s) to span a Sentinel group's failover: the
# new connection goes to the master the sentinels name then.
RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.05), 14)
STRAGGLER_PASSES = 4  # scans of the old owners after the slots are done
# How far ahead ``move`` sets the switch time: every worker following the plan looks at
# it every RECHECK_S, so each knows it in time.
ANNOUNCE_S = 3 * RECHECK_S


class ReshardError(Exception):
    """A reshard that cannot go on (another plan in progress, a step out of order)."""


def moving_slots(old: Sequence[str], new: Sequence[str]) -> dict[int, tuple[str, str]]:
    """slot -> (old owner URL, new owner URL), for each slot whose owner changes."""
    out = {}
    for slot in range(SLOT_COUNT):
        src, dst = old[owner(slot, len(old))], new[owner(slot, len(new))]
        if src != dst:
            out[slot] = (src, dst)
    return out


@dataclass
class Report:
    slots: int = 0  # slots moved in this run
    keys: int = 0  # keys moved to their new owner
    kept: list[str] = field(default_factory=list)  # written on both sides: new value kept
    merged: list[str] = field(default_factory=list)  # job queue streams written on both
    stragglers: int = 0  # keys written on an old owner during the move, moved after it
    indexed: int = 0  # session index entries moved to the index of their new shard
    stopped: bool = False  # --max-slots reached; run again to go on


class Plan:
    """One reshard from ``old`` to ``new``: the servers and the recorded progress."""

    def __init__(self, old: Sequence[str], new: Sequence[str], timeout: float = 10.0) -> None:
        if len(set(old)) != len(old) or len(set(new)) != len(new):
            raise ReshardError("a URL appears twice in a shard list")
        if list(old) == list(new):
            raise ReshardError("the new list is the old list: nothing to move")
        self.old, self.new = list(old), list(new)
        self.moving = moving_slots(old, new)
        self._timeout = timeout
        self._clients: dict[str, aioredis.Redis] = {}
        self._groups: list[SentinelGroup] = []
        self.control = self.client(new[0])

    def client(self, url: str) -> aioredis.Redis:
        """A client of ``url``'s server; of a Sentinel group, of its master as its
        sentinels name it at each new connection."""
        if url not in self._clients:
            self._clients[url], group = connect(url, self._timeout)
            self._groups += [group] if group is not None else []
        return self._clients[url]

    def wait_ms(self, url: str) -> int:
        """How long a replica of ``url``'s group has to confirm copies (see move_keys);
        0 for a plain server, whose replicas no one promotes."""
        return int(self._timeout * 500) if url.startswith(SENTINEL_SCHEME) else 0

    async def record(self, mapping: dict[str, Any]) -> None:
        """Write the plan on the first server of both lists (a replica of a Sentinel
        group's master confirming it: a failover must not forget a switch time)."""
        for url in dict.fromkeys([self.old[0], self.new[0]]):
            client = self.client(url)
            pipe = client.pipeline(transaction=False)
            pipe.hset(CONTROL, mapping=mapping)
            await replicated(client, pipe, self.wait_ms(url))

    async def close(self) -> None:
        for client in self._clients.values():
            if all(group.client is not client for group in self._groups):
                await client.aclose()
        for group in self._groups:
            await group.close()

    def controls(self) -> list[aioredis.Redis]:
        """The first server of each list, where the plan is recorded."""
        return [self.client(url) for url in dict.fromkeys([self.old[0], self.new[0]])]

    async def switch(self, ahead_s: float) -> None:
        """Record when the new owners serve the moving slots (``ahead_s`` from now on
        the first server's clock, unless recorded already), and wait for that moment."""
        found = await self.recorded()
        seconds, micros = await self.control.time()
        now_ms = seconds * 1000 + micros // 1000
        if "switch_at" in found:
            switch_at = int(found["switch_at"])
        else:
            switch_at = now_ms + int(ahead_s * 1000)
            await self.record({"switch_at": switch_at, "phase": "pulling"})
        # Every worker following the plan knows the moment by then (they look every
        # RECHECK_S) and switches at it: from then on no one writes the old owners.
        await asyncio.sleep(max(0.0, (switch_at - now_ms) / 1000) + 0.2)

    async def old_workers(self) -> int:
        """Workers that still serve the old list (their heartbeats, see moving.py)."""
        client = self.client(self.old[0])
        count = 0
        async for key in client.scan_iter(match=f"{CONTROL}:w:*", count=1000):
            count += await client.get(key) == b"old"
        return count

    async def recorded(self) -> dict[str, str]:
        found = await self.control.hgetall(CONTROL)
        return {k.decode(): v.decode() for k, v in found.items()}

    async def check_mine(self) -> dict[str, str]:
        found = await self.recorded()
        if found and (json.loads(found["from"]), json.loads(found["to"])) != (self.old, self.new):
            raise ReshardError(
                f"another reshard is recorded on {self.new[0]}: from {found['from']} to "
                f"{found['to']}; finish it first"
            )
        return found

    async def scan_moving(self, url: str) -> dict[int, list[bytes]]:
        """The keys on ``url`` of the moving slots it loses, by slot (session indexes
        left out: they are rebuilt)."""
        out: dict[int, list[bytes]] = defaultdict(list)
        async for key in self.client(url).scan_iter(count=1000):
            if key.startswith(CONTROL.encode()) or INDEX_MARK.encode() in key:
                continue
            slot = key_slot(key)
            pair = self.moving.get(slot)
            if pair is not None and pair[0] == url:
                out[slot].append(key)
        return out


async def begin(plan: Plan) -> bool:
    """Record the plan, announced, on the first server of both lists. False if it was
    recorded already."""
    found = await plan.check_mine()
    if found:
        return False
    await plan.record(
        {"from": json.dumps(plan.old), "to": json.dumps(plan.new), "phase": "announced"}
    )
    return True


async def move(plan: Plan, max_slots: int | None = None, announce_s: float = ANNOUNCE_S) -> Report:
    """Move every key of the moving slots to its new owner (every instance on the new
    list), rebuild the session indexes, end the reshard."""
    if not await plan.check_mine():
        raise ReshardError("no reshard recorded for these lists: run it without --move first")
    # A worker that just exited leaves its heartbeat for up to 3 * RECHECK_S.
    for _ in range(int(ANNOUNCE_S * 2) + 2):
        waiting = await plan.old_workers()
        if not waiting:
            break
        await asyncio.sleep(0.5)  # polling another process's expiring key
    if waiting:
        raise ReshardError(
            f"{waiting} worker(s) still serve the old list: set [redis] urls to the new list "
            "on every instance, SIGHUP each and wait for 'reload complete'"
        )
    await plan.switch(announce_s)
    report = Report()
    done = {int(k) for k in await plan.control.hkeys(SLOTS)}
    for src in sorted({src for src, _ in plan.moving.values()}):
        by_slot = await plan.scan_moving(src)
        for slot in sorted(by_slot):
            if slot in done:
                continue
            if max_slots is not None and report.slots >= max_slots:
                report.stopped = True
                return report
            await _move_slot(plan, slot, by_slot[slot], report)
            await plan.control.hset(SLOTS, str(slot), "done")
            report.slots += 1
    # Keys written on an old owner while it was scanned (by an instance still on the old
    # list, or a slot done before the write), or missed by a scan that a failover cut:
    # moved the same way, until a whole scan finds none.
    for _ in range(STRAGGLER_PASSES):
        found = 0
        for src in sorted({src for src, _ in plan.moving.values()}):
            for slot, keys in (await plan.scan_moving(src)).items():
                before = report.keys
                found += len(keys)
                await _move_slot(plan, slot, keys, report)
                report.stragglers += report.keys - before
        if not found:
            break
    else:
        raise ReshardError(
            "keys of moving slots keep appearing on their old shards (an instance on the "
            "old list?); run the same command again to go on"
        )
    report.indexed = await _rebuild_indexes(plan)
    for control in plan.controls():
        await control.delete(CONTROL, SLOTS)
    return report


async def _move_slot(plan: Plan, slot: int, keys: list[bytes], report: Report) -> None:
    src, dst = plan.moving[slot]
    waits = plan.wait_ms(src), plan.wait_ms(dst)
    moved = await move_keys(plan.client(src), plan.client(dst), list(keys), *waits)
    report.keys += len(moved.moved)
    for key in moved.kept:
        name = key.decode("utf-8", "surrogateescape")
        # A queue stream both sides wrote got the old side's jobs added (merge_jobs).
        (report.merged if key.startswith(QUEUE_MARK) else report.kept).append(name)


async def _rebuild_indexes(plan: Plan) -> int:
    """Move each session index entry to the index of its session's shard in the new list
    (the indexes are per shard: see docs/state.md, "Listing sessions")."""
    moved = 0
    count = len(plan.new)
    for url in dict.fromkeys([*plan.old, *plan.new]):
        client = plan.client(url)
        async for key in client.scan_iter(match=f"*{INDEX_MARK}*", count=1000):
            text = key.decode()
            prefix = text[: text.index(INDEX_MARK)]
            # An agent's index (``…}:a:AGENT``) moves to the agent's index there.
            suffix = text[text.index("}", len(prefix)) + 1 :]
            targets = [t + suffix for t in sharded_index_keys(prefix, count)]
            entries: list[Any] = [e async for e in client.zscan_iter(key)]
            for sid, score in entries:
                meta = f"{prefix}s:{{{sid.decode()}}}:meta"
                shard = owner(key_slot(meta), count)
                dest_url, dest_key = plan.new[shard], targets[shard]
                if (dest_url, dest_key) == (url, text):
                    continue
                await plan.client(dest_url).zadd(dest_key, {sid: score}, gt=True)
                await client.zrem(key, sid)
                moved += 1
    # A listing during the reshard drops the entries whose session it did not find on
    # the index's server (moved, or not yet): index every session again, keeping the
    # entries that are there (NX); one whose entry was dropped gets its creation time.
    for index, url in enumerate(plan.new):
        client = plan.client(url)
        async for meta in client.scan_iter(match="*s:{*}:meta", count=1000):
            text = meta.decode()
            at = text.rindex("s:{")
            prefix, sid = text[:at], text[at + 3 : -len("}:meta")]
            created, agent = await client.hmget(meta, "created_at", "agent")
            score = int(float(created or 0) * 1000)
            key = sharded_index_keys(prefix, count)[index]
            moved += await client.zadd(key, {sid: score}, nx=True)
            if agent:
                agents = K.session_agent_index(key, agent.decode())
                moved += await client.zadd(agents, {sid: score}, nx=True)
    return moved


async def recorded_from(url: str) -> list[str] | None:
    """The old list of the reshard recorded on ``url`` (the new list's first server)."""
    client, group = connect(url, 10.0)
    try:
        found = await client.hget(CONTROL, "from")
    finally:
        await (client.aclose() if group is None else group.close())
    return None if found is None else list(json.loads(found))


def connect(url: str, timeout: float) -> tuple[aioredis.Redis, SentinelGroup | None]:
    """The command's client of ``url`` (and its Sentinel group, if it is one)."""
    config = RedisConfig(timeout=timeout, connect_timeout=min(timeout, 60.0), pool_size=8)
    options = {
        "socket_timeout": timeout,
        "socket_connect_timeout": config.connect_timeout,
        "retry": RETRY,
    }
    # A failover the command follows is printed (a warning: the default handler's).
    return open_server(url, config, options, announce=True)
