"""Standalone mode's dead letters: the queue's per-partition list of buried jobs, and the
record steps of a retry, with the Redis store's semantics (see
:class:`agentd.store.dead.DeadLetters`)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ..api import DeadLetter, DeadLetters, DeadPage

__all__ = ("MemoryDeadLetters",)

# The result fields a retry drops (RECORD_REQUEUE's list).
_RESULT_FIELDS = ("error", "done", "text", "usage", "inc", "rseq", "items", "mat", "cx", "hook")


class MemoryDeadLetters(DeadLetters):
    # Provided by MemoryQueue and MemoryRecords.
    _dead: dict[str, OrderedDict[str, tuple[str, bytes, int]]]
    if TYPE_CHECKING:

        def _put_dead(self, partition: str, job_id: str, reason: bytes, attempts: int) -> str: ...

        def _record(self, rid: str) -> Any: ...

    async def dead_letters(self, partition: str, *, limit: int, after: str | None) -> DeadPage:
        dead = self._dead.get(partition, OrderedDict())
        key = _order(after) if after else None
        letters: list[DeadLetter] = []
        more = False
        for entry in reversed(dead):
            if key is not None and _order(entry) >= key:
                continue
            if len(letters) == limit:
                more = True
                break
            job_id, error, attempts = dead[entry]
            letters.append(DeadLetter(entry, partition, job_id, error, attempts))
        return DeadPage(letters, letters[-1].id if more and letters else None)

    async def take_dead(self, partition: str, entry: str) -> DeadLetter | None:
        found = self._dead.get(partition, OrderedDict()).pop(entry, None)
        if found is None:
            return None
        return DeadLetter(entry, partition, *found)

    async def put_dead(self, partition: str, job_id: str, error: bytes, attempts: int) -> str:
        return self._put_dead(partition, job_id, error, attempts)

    async def requeue(self, rid: str) -> str | None:
        record = self._record(rid)
        if record is None:
            return None
        f = record.fields
        status = f.get("status", b"").decode()
        if status != "failed":
            return status
        if "error" in f:
            f["lasterr"] = f["error"]
        for name in _RESULT_FIELDS:
            f.pop(name, None)
        f.update(status=b"queued", base=f.get("att", b"0"))
        return status

    async def unqueue(self, rid: str) -> bool:
        record = self._record(rid)
        if record is None:
            return False
        f = record.fields
        if f.get("status") != b"queued" or f.get("att") != f.get("base"):
            return False
        f.update(status=b"failed", done=b"%f" % time.time())
        if "lasterr" in f:
            f["error"] = f["lasterr"]
        return True


def _order(entry: str) -> tuple[int, int]:
    ms, _, n = entry.partition("-")
    return int(ms), int(n)
