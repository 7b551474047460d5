"""Keys moving between client-side shards (``agentd reshard``, docs/operations.md,
"Adding a shard").

A reshard records its plan (the old and the new URL list) on the first server of the new
list. A worker serving the new list that finds the plan there (at start, and every
:data:`RECHECK_S` seconds while one is found) **pulls** each key of a slot that changes
owner before it uses it: it copies the key from the old owner to the new one and deletes
it from the old one, then serves it from the new owner like any other. ``agentd
reshard`` moves the same way every key nobody asked for, slot by slot; pulls and the
command can run side by side.

A move never loses a write made on either side: the copy is restored on the new owner
only where the key is missing there (or still holds this mover's own earlier copy), and
the old key is deleted only if it is still exactly what was copied (compared by its
DUMP, in one script); a key written on the old owner meanwhile is moved again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ...fastpath import SLOT_COUNT, key_slot
from .. import keys as K

__all__ = ("CONTROL", "INDEX_MARK", "RECHECK_S", "Moved", "Moving", "move_keys", "owner")

log = logging.getLogger(__name__)

CONTROL = f"{K.PREFIX}reshard"  # hash on the new list's first server: from, to, phase
INDEX_MARK = "sx:{"  # session index keys are per shard: rebuilt, never pulled
RECHECK_S = 2.0  # how often a worker looks whether the reshard it follows has ended
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
    """A worker's view of the reshard to its URL list, while one is recorded."""

    def __init__(self, old: list[str], new: list[str], old_clients: list[Any]) -> None:
        self.old, self.new = old, new
        self.old_clients = old_clients
        self._moved: set[bytes] = set()  # keys this worker knows are on their new owner
        self._next_check = time.monotonic() + RECHECK_S
        self.ended = False

    @staticmethod
    async def load(control: Any, urls: list[str]) -> tuple[list[str], str] | None:
        """The old list of the reshard to ``urls`` recorded on ``control``, and its phase."""
        found = await control.hgetall(CONTROL)
        if not found or json.loads(found[b"to"]) != urls:
            return None
        return list(json.loads(found[b"from"])), found.get(b"phase", b"").decode()

    def source(self, key: str | bytes) -> int | None:
        """The old owner's index of ``key`` if its slot changes owner, else None."""
        slot = key_slot(key)
        src = owner(slot, len(self.old))
        if self.old[src] == self.new[owner(slot, len(self.new))]:
            return None
        return src

    def due(self) -> bool:
        """Whether to look again if the reshard has ended."""
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + RECHECK_S
        return True

    async def pull(self, keys: list[str], dst: Any) -> None:
        """Move onto ``dst`` (the new owner) the keys of a moving slot not yet there."""
        wanted: list[bytes] = []
        src_index: int | None = None
        for key in keys:
            raw = key.encode()
            if raw in self._moved or INDEX_MARK in key:
                continue
            index = self.source(raw)
            if index is None:
                continue
            src_index = index  # one call's keys share a slot, so a source
            wanted.append(raw)
        if not wanted or src_index is None:
            return
        done = await move_keys(self.old_clients[src_index], dst, list(wanted))
        for key in done.kept:
            log.warning(
                "reshard: %s was written on both its old and new shard; the new shard's "
                "value is kept",
                key.decode(errors="replace"),
            )
        if len(self._moved) > FORGET_AT:
            self._moved.clear()
        self._moved.update(wanted)

    async def close(self) -> None:
        for client in self.old_clients:
            with contextlib.suppress(Exception):
                await client.aclose()
