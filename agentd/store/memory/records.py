"""Standalone mode's response records: the Redis records' semantics in one process
(fenced by attempt, events numbered, expired lazily and by the store's sweep)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

from ..api import DELETED, TERMINAL, Records, Start, Subscription
from .feeds import Channels

__all__ = ("MemoryRecords",)


@dataclass(slots=True)
class _Record:
    fields: dict[str, bytes]
    events: list[bytes]
    expires: float
    events_expire: float = math.inf
    # The tool loop's recorded steps (Records.record_step).
    steps: list[bytes] = field(default_factory=list)


class MemoryRecords(Records):
    def __init__(self, events_ttl_s: int) -> None:
        self.events_ttl_s = events_ttl_s
        # Each tenant's records and their channels; this object sees tenant "".
        self._spaces: dict[str, tuple[dict[str, _Record], Channels]] = {"": ({}, Channels())}
        self._records, self._channels = self._spaces[""]

    def scoped(self, tenant: str) -> Self:
        """The same object (and queue, for a subclass) seeing ``tenant``'s records."""
        view = copy.copy(self)
        view._records, view._channels = self._spaces.setdefault(tenant, ({}, Channels()))
        return view

    def _record(self, rid: str) -> _Record | None:
        record = self._records.get(rid)
        if record is not None and record.expires <= time.monotonic():
            del self._records[rid]
            return None
        return record

    def sweep(self) -> None:
        """Drop every tenant's expired records (called now and then by the owner)."""
        now = time.monotonic()
        for records, _ in self._spaces.values():
            for rid in [r for r, rec in records.items() if rec.expires <= now]:
                del records[rid]

    async def create(
        self,
        rid: str,
        fields: Mapping[str, bytes],
        ttl_s: int,
        events: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        self.sweep()
        self._records[rid] = _Record(
            {"seq": b"0", "att": b"0", **fields}, [], time.monotonic() + ttl_s
        )
        self._write(rid, 0, {}, events, closing=False)

    async def read(self, rid: str) -> dict[str, bytes] | None:
        record = self._record(rid)
        return None if record is None else dict(record.fields)

    async def start(self, rid: str, max_attempts: int, consumer: str) -> Start:
        record = self._record(rid)
        if record is None:
            return Start("gone")
        f = record.fields
        status = f.get("status", b"").decode()
        if status in TERMINAL:
            return Start("done", status=status)
        attempt, seq = int(f.get("att", b"0")), int(f.get("seq", b"0"))
        if "cx" in f:
            return Start("cancel", attempt, seq, record=dict(f))
        # base: the attempts made before a retried dead letter queued it again.
        if attempt + 1 - int(f.get("base", b"0")) > max_attempts:
            return Start("exhausted", attempt, seq, record=dict(f))
        f.update(
            status=b"in_progress",
            att=b"%d" % (attempt + 1),
            started=b"%f" % time.time(),
            by=consumer.encode(),
        )
        return Start("run", attempt + 1, seq, record=dict(f))

    async def update(self, rid: str, attempt: int, fields: Mapping[str, bytes]) -> bool:
        record = self._record(rid)
        if record is None or int(record.fields.get("att", b"0")) != attempt:
            return False
        record.fields.update(fields)
        return True

    async def emit(self, rid: str, attempt: int, events: Sequence[tuple[int, bytes]]) -> bool:
        return self._write(rid, attempt, {}, events, closing=False)

    async def finish(
        self,
        rid: str,
        attempt: int,
        fields: Mapping[str, bytes],
        events: Sequence[tuple[int, bytes]],
    ) -> bool:
        return self._write(rid, attempt, fields, events, closing=True)

    def _write(
        self,
        rid: str,
        attempt: int,
        fields: Mapping[str, bytes],
        events: Sequence[tuple[int, bytes]],
        *,
        closing: bool,
    ) -> bool:
        record = self._record(rid)
        if record is None or int(record.fields.get("att", b"0")) != attempt:
            return False
        if closing and record.fields.get("status", b"").decode() in TERMINAL:
            return False
        if closing:
            record.steps.clear()
        record.fields.update(fields)
        if events:
            record.events_expire = time.monotonic() + self.events_ttl_s
        for seq, payload in events:
            record.events.append(payload)
            record.fields["seq"] = b"%d" % (seq + 1)
            self._channels.send(rid, payload)
        return True

    async def cancel_asked(self, rid: str) -> bool:
        record = self._record(rid)
        return record is None or "cx" in record.fields

    async def cancel(self, rid: str) -> str | None:
        record = self._record(rid)
        if record is None:
            return None
        status = record.fields.get("status", b"").decode()
        if status not in TERMINAL:
            record.fields["cx"] = b"1"
        return status

    async def delete(self, rid: str) -> bool:
        if self._records.pop(rid, None) is None:
            return False
        self._channels.send(rid, DELETED)
        return True

    async def events(self, rid: str, after: int) -> list[bytes]:
        record = self._record(rid)
        if record is None or record.events_expire <= time.monotonic():
            return []
        return record.events[after + 1 :]

    async def subscribe(self, rid: str) -> Subscription:
        return self._channels.subscribe(rid)

    async def record_step(self, rid: str, attempt: int, index: int, step: bytes) -> bool:
        record = self._record(rid)
        if record is None or int(record.fields.get("att", b"0")) != attempt:
            return False
        if len(record.steps) == index:
            record.steps.append(step)
        return True

    async def steps(self, rid: str) -> list[bytes]:
        record = self._record(rid)
        return [] if record is None else list(record.steps)
