"""Admission of interactive turns: how many a worker runs at once, in all and per
partition, and whether it is serving people now (the job runner reads that to leave
the CPU to them).

Only interactive turns count: a job's turn is paced by the job runner's own limits.
Over a cap, a turn is refused at once (503 ``overloaded`` with Retry-After), never queued.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

from ..config import Config
from ..errors import Overloaded

__all__ = ("Admission", "PeopleSignal")


class PeopleSignal(Protocol):
    """What the job runner needs to know of admission."""

    def serving_people(self, window_s: float) -> bool: ...


class Admission:
    def __init__(self, config: Config) -> None:
        self._inflight = 0
        self._max_inflight = config.server.max_inflight_turns
        self._partition_of = {a.name: config.partition_of(a.name) for a in config.agents}
        # Interactive turns per partition, for the partitions that cap them.
        self._partition_max = {
            p.name: p.max_inflight_turns for p in config.all_partitions() if p.max_inflight_turns
        }
        self._partition_inflight = dict.fromkeys(self._partition_max, 0)
        # When an interactive turn last began or ended (time.monotonic()): a worker
        # answering many short turns is busy with people although few run at any instant.
        self._last = -math.inf

    @property
    def inflight(self) -> int:
        """Interactive turns running in this worker now."""
        return self._inflight

    def check(self, agent: str) -> None:
        """Refuse at once when this worker already runs its maximum of interactive turns,
        or of the agent's partition's."""
        if self._inflight >= self._max_inflight:
            raise Overloaded(f"this worker runs {self._inflight} turns, its maximum", retry_after=1)
        partition = self._partition_of.get(agent)
        if partition in self._partition_max:
            running = self._partition_inflight[partition]
            if running >= self._partition_max[partition]:
                raise Overloaded(
                    f"this worker runs {running} turns of partition {partition!r}, its maximum",
                    retry_after=1,
                )

    def enter(self, agent: str) -> None:
        """Count a turn that passed :meth:`check` (``leave`` when it ends, however)."""
        self._step(agent, 1)

    def leave(self, agent: str) -> None:
        self._step(agent, -1)

    def _step(self, agent: str, step: int) -> None:
        self._inflight += step
        self._last = time.monotonic()
        partition = self._partition_of[agent]
        if partition in self._partition_inflight:
            self._partition_inflight[partition] += step

    def serving_people(self, window_s: float) -> bool:
        """Whether an interactive turn runs now, or began or ended in the last ``window_s``."""
        return self._inflight > 0 or time.monotonic() - self._last < window_s
