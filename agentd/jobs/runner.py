"""The job consumer every worker process runs: it reads the queues of the partitions its
instance serves and holds each job it takes while an attempt runs it (attempt.py).

A job is held by renewing its delivery every third of ``[jobs] lease_s``; a worker that
dies stops renewing and another consumer reclaims the job after the lease. Each
delivery begins a new attempt on the record, and every write of the attempt is fenced
by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket

from ..agent import PeopleSignal
from ..aio import end_if_cancelled
from ..config import Config
from ..errors import AgentdError, StoreUnavailable
from ..metrics import JobMetrics
from ..store import Delivery, Jobs
from .attempt import Attempts
from .partitions import Partition
from .service import Responses

__all__ = ("JobRunner", "consumer_name")

log = logging.getLogger(__name__)

# Jobs taken per read, and how long a read waits for one.
TAKE_MAX = 16
TAKE_BLOCK_S = 1.0
# How long closing waits for the queue readers to stop.
READER_STOP_S = 2.0


def consumer_name() -> str:
    """This process's name in the consumer groups: unique per host and process."""
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"


class JobRunner:
    """Consumes the job queues of the partitions this instance serves."""

    def __init__(
        self,
        config: Config,
        responses: Responses,
        jobs: Jobs,
        people: PeopleSignal,
        metrics: JobMetrics | None = None,
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.metrics = metrics
        self.consumer = consumer_name()
        served = set(config.server.partitions)
        self.partitions = [
            Partition(p.name, p.concurrency, p.queue_shards, config.jobs.busy_share, people)
            for p in config.all_partitions()
            if not served or p.name in served
        ]
        self._lease = config.jobs.lease_s
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[asyncio.Task[None], Delivery] = {}
        self._attempts = Attempts(config, responses, jobs, self.consumer, metrics)

    @property
    def running(self) -> int:
        return len(self._running)

    async def report(self) -> None:
        """Publish every partition's queue figures (called when /metrics is scraped)."""
        if self.metrics is None:
            return
        m = self.metrics
        for part in self.config.all_partitions():
            depth = await self.jobs.depth(part.name, part.queue_shards)
            m.queued.labels(part.name).set(depth.waiting)
            m.running.labels(part.name).set(depth.running)
            m.oldest.labels(part.name).set(depth.oldest_s)
            m.dead.labels(part.name).set(depth.dead)

    async def start(self) -> None:
        for part in self.partitions:
            for shard in range(part.shards):
                self._tasks.append(asyncio.create_task(self._read(part, shard)))
            self._tasks.append(asyncio.create_task(self._reclaim(part)))

    async def close(self, grace: float) -> None:
        """Stop taking jobs; let running ones finish for up to ``grace`` seconds, then
        hand the rest back to the queue for another consumer."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a reader blocked on a store that does not answer must not hold
            # up the drain.
            await asyncio.wait(self._tasks, timeout=READER_STOP_S)
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace)
        left = dict(self._running)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        for delivery in left.values():
            try:
                await self.jobs.retry(delivery)
            except Exception as exc:  # it comes back by reclaim, [jobs] lease_s later
                log.warning("job %s not handed back (%s): left to a reclaim", delivery.job_id, exc)
        await self._attempts.close()

    # -- taking jobs ------------------------------------------------------------------

    async def _read(self, part: Partition, shard: int) -> None:
        while True:
            end_if_cancelled()
            room = await part.wait_for_room()
            try:
                taken = await self.jobs.take(
                    part.name, shard, self.consumer, min(room, TAKE_MAX), TAKE_BLOCK_S
                )
            except AgentdError as exc:
                # An unreachable shard is logged once per outage by the store.
                if not isinstance(exc, StoreUnavailable):
                    log.warning("job queue %s/%d: %s", part.name, shard, exc.message)
                await asyncio.sleep(1.0)
                continue
            except Exception:
                # A reader must outlive any surprise: its stream has no other reader here.
                log.exception("job queue %s/%d: reading failed", part.name, shard)
                await asyncio.sleep(1.0)
                continue
            for delivery in taken:
                self._spawn(part, delivery)

    async def _reclaim(self, part: Partition) -> None:
        while True:
            end_if_cancelled()
            await asyncio.sleep(self._lease / 2 * (0.75 + random.random() / 2))
            for shard in range(part.shards):
                room = part.room()
                if room <= 0:
                    break
                try:
                    taken = await self.jobs.reclaim(
                        part.name, shard, self.consumer, self._lease, room
                    )
                except AgentdError as exc:
                    if not isinstance(exc, StoreUnavailable):  # logged by the store
                        log.warning("job queue %s/%d: %s", part.name, shard, exc.message)
                    continue
                except Exception:
                    log.exception("job queue %s/%d: reclaiming failed", part.name, shard)
                    continue
                for delivery in taken:
                    log.info("took over job %s (its worker stopped renewing it)", delivery.job_id)
                    self._spawn(part, delivery)

    def _spawn(self, part: Partition, delivery: Delivery) -> None:
        part.occupy()
        task = asyncio.create_task(self._hold(part, delivery))
        self._running[task] = delivery

        def done(t: asyncio.Task[None]) -> None:
            self._running.pop(t, None)
            part.release()

        task.add_done_callback(done)

    # -- holding one job --------------------------------------------------------------

    async def _hold(self, part: Partition, delivery: Delivery) -> None:
        """Run the job while renewing its delivery; a lost delivery stops the run."""
        work = asyncio.create_task(self._admit_and_attempt(part, delivery))
        try:
            while True:
                finished, _ = await asyncio.wait({work}, timeout=self._lease / 3)
                if finished:
                    break
                if not await self._renew(delivery):
                    log.warning("job %s was taken over by another consumer", delivery.job_id)
                    work.cancel()
                    break
            with contextlib.suppress(asyncio.CancelledError):
                await work
        except asyncio.CancelledError:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            raise
        except StoreUnavailable as exc:
            # A Redis node lost mid-job (a failover): the job stays pending, and is taken
            # over when its lease ends, like a job of a worker that died.
            log.warning("job %s stopped: %s; it is retried when its lease ends",
                        delivery.job_id, exc.message)  # fmt: skip
        except Exception:
            log.exception("job %s failed unexpectedly", delivery.job_id)

    async def _renew(self, delivery: Delivery) -> bool:
        try:
            return await self.jobs.renew(delivery, self.consumer)
        except AgentdError:
            return True  # the store is away: keep going, the write fences will tell

    async def _admit_and_attempt(self, part: Partition, delivery: Delivery) -> None:
        async with part.admitted():
            await self._attempts.run(delivery)
