"""The operator's side of the job queue: each partition's figures, and its dead letters
listed, retried (the response goes back to ``queued`` and its job on the queue for a new
round of ``[jobs] max_attempts`` attempts) or discarded.

A retry takes the dead letter first (of two operators at once, one only gets it), then
requeues the record, then queues the job; a step that fails undoes the earlier ones (the
record is ``failed`` again, the dead letter is back, under a new id). A worker that dies
between the steps, or a store that fails during the undoing, can leave the dead letter
gone with the response ``failed`` or ``queued`` with no job (logged); nothing runs twice.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Config
from ..errors import AgentdError, Conflict, NotFound, RateLimited
from ..store import DeadLetter, DeadPage, Jobs, Store, job_of

__all__ = ("DeadLetterDesk", "PartitionFigures", "letter_dict", "no_dead_letter", "queue_limit")

log = logging.getLogger(__name__)


def queue_shards(config: Config, partition: str) -> int:
    return next(p.queue_shards for p in config.all_partitions() if p.name == partition)


def queue_limit(config: Config, partition: str) -> int:
    """Jobs one stream of the partition may hold: ``[jobs] max_queued`` over its shards."""
    return -(-config.jobs.max_queued // queue_shards(config, partition))


def no_dead_letter(partition: str, entry: str) -> NotFound:
    return NotFound(
        f"no dead letter {entry[:80]!r} in partition {partition!r}", code="dead_letter_not_found"
    )


@dataclass(frozen=True, slots=True)
class PartitionFigures:
    partition: str
    depth: int
    running: int
    oldest_age_s: float | None
    retries: int
    dead: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "depth": self.depth,
            "running": self.running,
            "oldest_age_s": self.oldest_age_s,
            "retries": self.retries,
            "dead": self.dead,
        }


def letter_dict(letter: DeadLetter) -> dict[str, Any]:
    tenant, rid = job_of(letter.job_id)
    try:
        error = orjson.loads(letter.error)
    except orjson.JSONDecodeError:  # not written by agentd's attempts: shown as it is
        error = letter.error.decode(errors="replace")
    if not isinstance(error, dict):
        error = {"code": "job_failed", "message": str(error)}
    return {
        "id": letter.id,
        "partition": letter.partition,
        "response_id": rid,
        "tenant": tenant,
        "attempts": letter.attempts,
        "error": {"code": error.get("code"), "message": error.get("message")},
        "failed_at": letter.failed_at,
    }


class DeadLetterDesk:
    """The queue figures and dead letters of every partition, over the store."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store

    async def figures(self) -> list[PartitionFigures]:
        out = []
        for part in self.config.all_partitions():
            depth = await self.store.jobs.depth(part.name, part.queue_shards)
            oldest = depth.oldest_s if depth.waiting else None
            out.append(
                PartitionFigures(
                    part.name, depth.waiting, depth.running, oldest, depth.retries, depth.dead
                )
            )
        return out

    async def page(self, partition: str, limit: int, after: str | None) -> DeadPage:
        return await self.store.jobs.dead_letters(partition, limit=limit, after=after)

    async def discard(self, partition: str, entry: str) -> DeadLetter:
        letter = await self.store.jobs.take_dead(partition, entry)
        if letter is None:
            raise no_dead_letter(partition, entry)
        return letter

    async def retry(self, partition: str, entry: str) -> tuple[DeadLetter, str]:
        """Queue a dead letter's job again; the letter and its response id."""
        jobs = self.store.jobs
        letter = await jobs.take_dead(partition, entry)
        if letter is None:
            raise no_dead_letter(partition, entry)
        tenant, rid = job_of(letter.job_id)
        records = self.store.for_tenant(tenant).jobs
        # BaseException: a cancelled request must not lose the letter it took either.
        try:
            status = await records.requeue(rid)
        except BaseException:
            await self._put_back(letter)
            raise
        if status != "failed":
            await self._put_back(letter)
            if status is None:
                raise Conflict(
                    f"response {rid!r} of dead letter {entry!r} has expired: discard the letter",
                    code="response_expired",
                )
            raise Conflict(
                f"response {rid!r} of dead letter {entry!r} is {status}, not failed",
                code="response_not_failed",
            )
        shard = random.randrange(queue_shards(self.config, partition))
        limit = queue_limit(self.config, partition)
        try:
            queued = await jobs.enqueue(partition, shard, letter.job_id, limit)
        except BaseException:
            await self._undo(records, rid, letter)
            raise
        if not queued:
            await self._undo(records, rid, letter)
            raise RateLimited(
                f"partition {partition!r} has {self.config.jobs.max_queued} jobs queued",
                code="queue_full",
                retry_after=1,
            )
        log.info("dead letter %s (response %s) queued again", entry, rid)
        return letter, rid

    async def _undo(self, records: Jobs, rid: str, letter: DeadLetter) -> None:
        try:
            await records.unqueue(rid)
        except AgentdError as exc:
            log.warning("response %s stays queued with no job (%s)", rid, exc.message)
        await self._put_back(letter)

    async def _put_back(self, letter: DeadLetter) -> None:
        try:
            await self.store.jobs.put_dead(
                letter.partition, letter.job_id, letter.error, letter.attempts
            )
        except AgentdError as exc:
            log.warning("dead letter %s of %s lost (%s)", letter.id, letter.job_id, exc.message)
