"""A partition's places for jobs in this worker, and its pace while the worker serves
people: the event loop shares the CPU between ready tasks, so fewer jobs at once leave
more of it to interactive turns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..agent import PeopleSignal

__all__ = ("BUSY_POLL_S", "BUSY_WINDOW_S", "Partition")

# A worker counts as serving people while an interactive turn runs or began this
# recently; a partition at its busy limit looks again this often.
BUSY_WINDOW_S = 0.25
BUSY_POLL_S = 0.05


class Partition:
    """One partition this worker consumes: how many of its jobs it holds and runs."""

    def __init__(
        self,
        name: str,
        concurrency: int,
        shards: int,
        busy_share: float,
        people: PeopleSignal,
    ) -> None:
        self.name = name
        self.shards = shards
        self.concurrency = concurrency
        self.free = concurrency  # places for jobs taken from the queue
        self.active = 0  # taken jobs whose attempt has begun
        # Jobs it may run while the worker also serves interactive turns.
        self.busy_limit = max(1, int(concurrency * busy_share))
        self.freed = asyncio.Event()
        self._people = people

    def busy(self) -> bool:
        """Whether this worker serves people now: an interactive turn runs or just began."""
        return self._people.serving_people(BUSY_WINDOW_S)

    def room(self) -> int:
        """Jobs the partition may take now: its free places, and while this worker
        serves people, no more than its busy limit held."""
        if not self.busy():
            return self.free
        return min(self.free, self.busy_limit - (self.concurrency - self.free))

    async def wait_for_room(self) -> int:
        """Wait until the partition may take a job; return how many it may take."""
        while (room := self.room()) <= 0:
            self.freed.clear()
            # A job ending frees a place; interactive turns ending widen the limit.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BUSY_POLL_S):
                    await self.freed.wait()
        return room

    def occupy(self) -> None:
        """A job was taken: it holds a place until ``release``."""
        self.free -= 1

    def release(self) -> None:
        self.free += 1
        self.freed.set()

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Wait until a held job may begin, and count it as running meanwhile: the
        readers of several streams may together take more than the busy limit, and the
        extra ones wait here (still held)."""
        while self.busy() and self.active >= self.busy_limit:  # noqa: ASYNC110 - a poll:
            await asyncio.sleep(BUSY_POLL_S)  # "busy" ends by time, with no event to wait on
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
