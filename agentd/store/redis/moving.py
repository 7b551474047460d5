"""Keys moving between client-side shards (``agentd reshard``, docs/operations.md,
"Adding a shard").

A reshard records its plan (the old and the new URL list) on the first server of both
lists, in slot 0 (which the first server owns in every list). A worker of the sharded
mode looks for it there at start; one that serves either list follows it, and looks
again every :data:`RECHECK_S` seconds while it does:

- until the plan names a switch time, the keys of a slot that changes owner are served
  by their old owner (as by the instances not yet switched to the new list);
- ``agentd reshard --move`` records a switch time (the first server's clock, a few
  RECHECK_S ahead, so that every worker knows it in time); from then on every worker
  serves those keys from their new owner, and **pulls** each from the old owner before
  it uses it (copies it to the new owner, deletes it from the old one). The command
  moves the same way every key nobody asked for. Each worker converts the switch time
  to its own monotonic clock at its look (with the server's TIME from the same round
  trip), so all switch together, whatever their wall clocks say.

A move never loses a write: the copy is restored on the new owner only where the key is
missing (or still holds this mover's own earlier copy), and the old key is deleted only
if it is still exactly what was copied (compared by its DUMP, in one script); a key
written on the old owner meanwhile is moved again. Between Sentinel groups a replica
confirms the copies before the old key goes, and the deletes, so that a failover of
either group neither loses a key nor brings one back.

While it follows a plan a worker keeps a heartbeat key beside it, naming the list it
serves, so that ``agentd reshard --move`` refuses to go on while a worker started on the
old list since the plan was recorded still runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as rexc

from ...fastpath import SLOT_COUNT, key_slot
from .. import keys as K

__all__ = (
    "CONTROL",
    "INDEX_MARK",
    "RECHECK_S",
    "Moved",
    "Moving",
    "NotReplicated",
    "move_keys",
    "owner",
    "replicated",
)

log = logging.getLogger(__name__)

# The plan (hash: from, to, switch_at, phase) and the workers' heartbeats (CONTROL:w:ID), tagged
# into slot 0, which the first server owns whatever the number of shards.
CONTROL = f"{K.PREFIX}reshard:{{reshard51181}}"
INDEX_MARK = "sx:{"  # session index keys are per shard: rebuilt, never pulled
QUEUE_MARK = f"{K.PREFIX}q:{{".encode()  # the job queue streams
RECHECK_S = 2.0  # how often a worker following a reshard looks at its plan again
ATTEMPTS = 5  # moves of one key written on its old owner again and again meanwhile
FORGET_AT = 100_000  # keys a worker remembers as moved before it starts over

# Each key's DUMP (nil if none) and PTTL, in one round trip.
DUMPS = """
local out = {}
for i, key in ipairs(KEYS) do
  out[#out + 1] = redis.call('DUMP', key) or false
  out[#out + 1] = redis.call('PTTL', key)
end
return out
"""

# RESTORE KEYS[1] from ARGV[2] with TTL ARGV[1] where it is missing (1), or where it still
# holds ARGV[3], this mover's earlier copy (2); else leave it (0: another mover's copy, or
# a newer value written on the new owner).
RESTORE_IF = """
local now = redis.call('DUMP', KEYS[1])
if not now then
  redis.call('RESTORE', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
if ARGV[3] ~= '' and now == ARGV[3] then
  redis.call('RESTORE', KEYS[1], ARGV[1], ARGV[2], 'REPLACE')
  return 2
end
return 0
"""

# Delete each key that is still exactly ARGV[i] (by DUMP); answer 1/0 per key.
DELETE_IF_SAME = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('DUMP', key) == ARGV[i] then
    redis.call('DEL', key)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


def owner(slot: int, count: int) -> int:
    """The shard owning ``slot`` among ``count`` (the store's mapping, see shards.py)."""
    return slot * count // SLOT_COUNT


@dataclass
class Moved:
    """What moving some keys did."""

    moved: list[bytes] = field(default_factory=list)  # copied, then deleted on the old owner
    kept: list[bytes] = field(default_factory=list)  # the new owner had a newer value
    absent: list[bytes] = field(default_factory=list)  # nothing on the old owner


class NotReplicated(rexc.ConnectionError):
    """No replica of a Sentinel group's master confirmed the copies in time: the old
    owner's keys stay (a failover now could lose the copies), the move stops as on an
    unreachable server, and going on later moves them."""


async def move_keys(
    src: Any, dst: Any, keys: list[bytes | str], src_wait_ms: int = 0, dst_wait_ms: int = 0
) -> Moved:
    """Move ``keys`` (one slot's, or any) from ``src`` to ``dst`` (redis clients).

    ``dst_wait_ms``: when ``dst`` is a Sentinel group's master, how long a replica has to
    confirm the copies (WAIT) before the old owner's keys are deleted, so that a failover
    of the new owner's group during the move loses none; ``src_wait_ms``: the same for
    the deletes on ``src``, so that a failover of the old owner's group brings none back
    (0: no waiting, for a plain server)."""
    done = Moved()
    todo = [k.encode() if isinstance(k, str) else k for k in keys]
    restored: dict[bytes, bytes] = {}  # key -> the payload this mover restored
    for _ in range(ATTEMPTS):
        if not todo:
            break
        flat = await src.eval(DUMPS, len(todo), *todo)
        present: list[tuple[bytes, bytes]] = []
        ttls: dict[bytes, int] = {}
        for i, key in enumerate(todo):
            if flat[2 * i] is None:
                done.absent.append(key)
            else:
                present.append((key, flat[2 * i]))
                ttls[key] = max(int(flat[2 * i + 1]), 0)
        if not present:
            todo = []
            break
        # One connection for the copies and the WAIT: WAIT counts its own client's writes.
        pipe = dst.pipeline(transaction=False)
        for key, payload in present:
            pipe.eval(RESTORE_IF, 1, key, ttls[key], payload, restored.get(key, b""))
        results = await replicated(dst, pipe, dst_wait_ms)
        for (key, payload), result in zip(present, results, strict=False):
            if int(result):
                restored[key] = payload
            elif key in restored:
                # Written on the new owner since this mover's copy, and on the old one
                # since: the new owner's value stays (a job queue gets the old one's jobs).
                done.kept.append(key)
                if key.startswith(QUEUE_MARK) and not key.endswith(b":dead"):
                    await merge_jobs(src, dst, key)
        pipe = src.pipeline(transaction=False)
        pipe.eval(DELETE_IF_SAME, len(present), *(k for k, _ in present), *(p for _, p in present))
        (gone,) = await replicated(src, pipe, src_wait_ms)
        # A key written on the old owner since its DUMP is moved again.
        todo = [key for (key, _), ok in zip(present, gone, strict=True) if not int(ok)]
        done.moved += [key for (key, _), ok in zip(present, gone, strict=True) if int(ok)]
        todo = [key for key in todo if key not in done.kept]
    done.kept += todo  # still written on the old owner after ATTEMPTS moves
    return done


async def replicated(client: Any, pipe: Any, wait_ms: int) -> list[Any]:
    """Run ``pipe``'s writes (on ``client``) and, with ``wait_ms`` and a replica
    connected, a WAIT for one on the same connection (WAIT counts its own connection's
    writes; with no replica it would wait its whole timeout, and a failover would have
    nothing to promote); their results, the WAIT's left out."""
    if wait_ms:
        role = await client.execute_command("ROLE")
        wait_ms = wait_ms if role[0] in (b"master", "master") and role[2] else 0
    if not wait_ms:
        return list(await pipe.execute())
    pipe.execute_command("WAIT", 1, wait_ms)
    *results, acks = await pipe.execute()
    if not int(acks):
        raise NotReplicated(f"no replica confirmed the move's writes within {wait_ms} ms")
    return results


async def merge_jobs(src: Any, dst: Any, stream: bytes) -> None:
    """Add to ``dst``'s queue stream the jobs of ``src``'s it lacks, so that every job
    still runs (one may run twice: a job's record fences its attempts)."""
    have = {fields.get(b"id") for _, fields in await dst.xrange(stream)}
    for _, fields in await src.xrange(stream):
        if fields.get(b"id") not in have:
            await dst.xadd(stream, fields)


class Moving:
    """A worker's view of the reshard it follows."""

    def __init__(self, old: list[str], new: list[str]) -> None:
        self.old, self.new = old, new
        self._moved: set[bytes] = set()  # keys this worker knows are on their new owner
        self.switch_at: int | None = None  # ms, the first server's clock
        self.switch_mono: float | None = None  # the same moment, on this monotonic clock

    def set_switch(self, switch_at: int | None, server_ms: int, local: float) -> bool:
        """Take the plan's switch time (``server_ms``: the server's clock when ``local``
        was this one's). True if it is new."""
        if switch_at is None or switch_at == self.switch_at:
            return False
        self.switch_at = switch_at
        self.switch_mono = local + (switch_at - server_ms) / 1000
        return True

    def pulling(self) -> bool:
        return self.switch_mono is not None and time.monotonic() >= self.switch_mono

    @staticmethod
    async def load(control: Any, urls: list[str]) -> tuple[list[str], list[str], int | None, int]:
        """The (old list, new list, switch time or None, the server's time in ms) of a
        plan on ``control`` that concerns ``urls`` (as its old or its new list); the
        lists are empty when there is none."""
        pipe = control.pipeline(transaction=False)
        pipe.hgetall(CONTROL)
        pipe.time()
        found, (seconds, micros) = await pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        if not found:
            return [], [], None, now_ms
        old, new = list(json.loads(found[b"from"])), list(json.loads(found[b"to"]))
        if urls not in (old, new):
            log.warning("a reshard from %s to %s is recorded, not of this list: ignored", old, new)
            return [], [], None, now_ms
        switch = found.get(b"switch_at")
        return old, new, None if switch is None else int(switch), now_ms

    def route(self, key: str | bytes) -> tuple[str, str | None] | None:
        """For a key of a slot that changes owner: (the URL that serves it now, the old
        owner's URL to pull it from first, or None before the switch); else None."""
        slot = key_slot(key)
        src, dst = self.old[owner(slot, len(self.old))], self.new[owner(slot, len(self.new))]
        if src == dst:
            return None
        return (dst, src) if self.pulling() else (src, None)

    async def pull(self, keys: list[str], src: Any, dst: Any, waits: tuple[int, int]) -> None:
        """Move from ``src`` to ``dst`` the keys (of one moving slot) not moved yet
        (``waits``: for a replica of each, in ms: see :func:`move_keys`)."""
        wanted = [k.encode() for k in keys if INDEX_MARK not in k]
        wanted = [k for k in wanted if k not in self._moved]
        if not wanted:
            return
        done = await move_keys(src, dst, list(wanted), *waits)
        for key in done.kept:
            log.warning(
                "reshard: %s was written on both its old and new shard; the new shard's "
                "value is kept",
                key.decode(errors="replace"),
            )
        if len(self._moved) > FORGET_AT:
            self._moved.clear()
        self._moved.update(wanted)
