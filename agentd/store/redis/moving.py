"""Keys moving between client-side shards (``agentd reshard``, docs/operations.md,
"Adding a shard").

A reshard records its plan (the old and the new URL list, and a phase) on the first
server of both lists, in slot 0 (which the first server owns in every list). A worker of
the sharded mode looks for it there at start; one that serves either list follows it,
and looks again every :data:`RECHECK_S` seconds while it does:

- phase ``announced``: the keys of a slot that changes owner are served by the old
  owner (as by the instances not yet switched to the new list);
- phase ``pulling`` (set by ``agentd reshard --move``, which then waits until every
  worker has seen it): they are served by the new owner.

In both phases a worker **pulls** each such key from the other owner before it uses it
(copies it to the owner that serves it, deletes it from the other): so a worker that
sees a phase a little later than another moves a key back rather than miss it.
``agentd reshard --move`` moves the same way every key nobody asked for.

A move never loses a write made on either side: the copy is restored where the key is
missing (or still holds this mover's own earlier copy), and the source key is deleted
only if it is still exactly what was copied (compared by its DUMP, in one script); a
key written on the source meanwhile is moved again.

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

from ...fastpath import SLOT_COUNT, key_slot
from .. import keys as K

__all__ = (
    "CONTROL",
    "INDEX_MARK",
    "PHASES",
    "RECHECK_S",
    "Moved",
    "Moving",
    "move_keys",
    "owner",
)

log = logging.getLogger(__name__)

# The plan (hash: from, to, phase) and the workers' heartbeats (CONTROL:w:ID), tagged
# into slot 0, which the first server owns whatever the number of shards.
CONTROL = f"{K.PREFIX}reshard:{{reshard51181}}"
INDEX_MARK = "sx:{"  # session index keys are per shard: rebuilt, never pulled
RECHECK_S = 2.0  # how often a worker following a reshard looks at its plan again
PHASES = ("announced", "pulling")
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


async def move_keys(src: Any, dst: Any, keys: list[bytes | str]) -> Moved:
    """Move ``keys`` (one slot's, or any) from ``src`` to ``dst`` (redis clients)."""
    done = Moved()
    todo = [k.encode() if isinstance(k, str) else k for k in keys]
    restored: dict[bytes, bytes] = {}  # key -> the payload this mover restored
    for _ in range(ATTEMPTS):
        if not todo:
            break
        flat = await src.eval(DUMPS, len(todo), *todo)
        dumps = [(flat[i], int(flat[i + 1])) for i in range(0, len(flat), 2)]
        present: list[tuple[bytes, bytes]] = []
        for key, (payload, pttl) in zip(todo, dumps, strict=True):
            if payload is None:
                done.absent.append(key)
                continue
            ttl = max(pttl, 0)
            result = await dst.eval(RESTORE_IF, 1, key, ttl, payload, restored.get(key, b""))
            if int(result) == 0 and key in restored:
                done.kept.append(key)  # written on both sides: the new owner's stays
            elif int(result):
                restored[key] = payload
            present.append((key, payload))
        if not present:
            break
        gone = await src.eval(
            DELETE_IF_SAME, len(present), *(k for k, _ in present), *(p for _, p in present)
        )
        # A key written on the old owner since its DUMP is moved again.
        todo = [key for (key, _), ok in zip(present, gone, strict=True) if not int(ok)]
        done.moved += [key for (key, _), ok in zip(present, gone, strict=True) if int(ok)]
    done.kept += [k for k in todo if k not in done.kept]
    return done


class Moving:
    """A worker's view of the reshard it follows."""

    def __init__(self, old: list[str], new: list[str], phase: str) -> None:
        self.old, self.new = old, new
        self._moved: set[bytes] = set()  # keys this worker knows are on their new owner
        self.phase = ""
        self._trust_at = 0.0
        self.set_phase(phase)

    def set_phase(self, phase: str) -> None:
        """Enter ``phase``. Other workers see a new phase up to RECHECK_S later, and until
        then may pull keys back to the old owner: this one remembers which keys it
        moved only once every worker pulls the same way."""
        if phase != self.phase:
            self.phase = phase
            self._moved.clear()
            self._trust_at = time.monotonic() + 2 * RECHECK_S

    @staticmethod
    async def load(control: Any, urls: list[str]) -> tuple[list[str], list[str], str] | None:
        """The (old list, new list, phase) of a plan recorded on ``control`` that
        concerns ``urls`` (as its old or its new list), else None."""
        found = await control.hgetall(CONTROL)
        if not found:
            return None
        old, new = list(json.loads(found[b"from"])), list(json.loads(found[b"to"]))
        if urls not in (old, new):
            log.warning("a reshard from %s to %s is recorded, not of this list: ignored", old, new)
            return None
        return old, new, found.get(b"phase", b"announced").decode()

    def route(self, key: str | bytes) -> tuple[str, str] | None:
        """For a key of a slot that changes owner: (the URL that serves it now, the URL
        of the other owner, to pull it from); else None."""
        slot = key_slot(key)
        src, dst = self.old[owner(slot, len(self.old))], self.new[owner(slot, len(self.new))]
        if src == dst:
            return None
        return (src, dst) if self.phase == "announced" else (dst, src)

    async def pull(self, keys: list[str], src: Any, dst: Any) -> None:
        """Move from ``src`` to ``dst`` the keys (of one moving slot) not moved yet."""
        wanted = [k.encode() for k in keys if INDEX_MARK not in k]
        wanted = [k for k in wanted if k not in self._moved]
        if not wanted:
            return
        done = await move_keys(src, dst, list(wanted))
        for key in done.kept:
            log.warning(
                "reshard: %s was written on both its old and new shard; the new shard's "
                "value is kept",
                key.decode(errors="replace"),
            )
        # Not while announced: a worker that sees "pulling" first moves keys to the new
        # owner, and this one must then pull them back until it sees "pulling" too.
        if self.phase != "announced" and time.monotonic() >= self._trust_at:
            if len(self._moved) > FORGET_AT:
                self._moved.clear()
            self._moved.update(wanted)
