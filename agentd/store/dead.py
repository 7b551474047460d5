"""Dead letters, as operators see them: each partition's jobs that ran out of attempts,
listed, put back on the queue, or discarded (``Store.jobs`` implements this beside the
queue and the records; the admin API is ``agentd/server/jobs_admin.py``)."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass

__all__ = ("DEAD_ID_RE", "DeadLetter", "DeadLetters", "DeadPage")

# A dead letter's id: its stream entry id (ms-sequence), in Redis and in memory alike.
DEAD_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str  # the dead-letter stream entry's id
    partition: str
    job_id: str  # the queued job's id (keys.job_id: tenant and response id)
    error: bytes  # the last attempt's error, JSON
    attempts: int  # attempts made (0: buried before this was noted)

    @property
    def failed_at(self) -> float:
        """When it was buried (unix seconds): the entry id's time."""
        return int(self.id.split("-", 1)[0]) / 1000


@dataclass(frozen=True, slots=True)
class DeadPage:
    """A page of dead letters, newest first; ``next_after`` continues after it (None:
    the last page)."""

    letters: list[DeadLetter]
    next_after: str | None


class DeadLetters(abc.ABC):
    """What an operator does with dead letters, and with the record of a retried one."""

    @abc.abstractmethod
    async def dead_letters(self, partition: str, *, limit: int, after: str | None) -> DeadPage:
        """The partition's dead letters, newest first, those older than ``after`` (an id)."""

    @abc.abstractmethod
    async def take_dead(self, partition: str, entry: str) -> DeadLetter | None:
        """Remove one dead letter and return it (None if there is none: of two callers
        at once, one only gets it)."""

    @abc.abstractmethod
    async def put_dead(self, partition: str, job_id: str, error: bytes, attempts: int) -> str:
        """Add a dead letter (a buried job, or one a failed retry puts back); its id."""

    @abc.abstractmethod
    async def requeue(self, rid: str) -> str | None:
        """Put a ``failed`` response back to ``queued`` for a new round of
        ``[jobs] max_attempts`` attempts (its attempt fence goes on growing); returns the
        status it had (only ``failed`` is changed), None when there is no record."""

    @abc.abstractmethod
    async def unqueue(self, rid: str) -> bool:
        """Undo :meth:`requeue` when its job could not be queued (unless an attempt
        began meanwhile): the response is ``failed`` again with its error."""
