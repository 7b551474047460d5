"""A background response's durable tool loop: the checkpoint its turn records each
completed step in (the store's ``record_step``, fenced by the attempt), and what a later
attempt needs to go on after those steps without telling its readers anything twice."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from ..agent import Checkpoint, RecordedStep
from ..errors import AgentdError
from ..store import Records

__all__ = ("FencedOut", "StepLog", "Streamed")

log = logging.getLogger(__name__)


class FencedOut(Exception):
    """A newer attempt owns the job: this one stops without writing anything more."""


class StepLog(Checkpoint):
    """The steps of one response's tool loop in the store, keyed by the response id:
    those earlier attempts recorded, and each new one, one round trip per step."""

    __slots__ = ("_attempt", "_next", "_recorded", "_records", "_rid")

    def __init__(
        self, records: Records, rid: str, attempt: int, recorded: Sequence[RecordedStep] = ()
    ) -> None:
        self._records, self._rid, self._attempt = records, rid, attempt
        self._recorded = list(recorded)
        self._next = len(self._recorded)  # the index the next step is recorded at

    @classmethod
    async def load(cls, records: Records, rid: str, attempt: int) -> StepLog:
        """The response's checkpoint for ``attempt``, with the steps recorded before it
        (a first attempt has none to read)."""
        raw = await records.steps(rid) if attempt > 1 else []
        return cls(records, rid, attempt, [_decoded(r) for r in raw])

    def recorded(self) -> Sequence[RecordedStep]:
        return self._recorded

    async def step(self, step: RecordedStep) -> None:
        """Record the step; an attempt fenced out by a newer one stops here (before its
        next model call or tool call). A store that fails the write leaves the step
        unrecorded, and the turn goes on: only a later attempt would run it again."""
        index, self._next = self._next, self._next + 1
        payload = orjson.dumps({"said": step.said, "results": step.results, "usage": step.usage})
        try:
            kept = await self._records.record_step(self._rid, self._attempt, index, payload)
        except AgentdError as exc:
            log.warning("response %s: step %d not recorded (%s)", self._rid, index, exc.message)
            return
        if not kept:
            raise FencedOut


def _decoded(raw: bytes) -> RecordedStep:
    doc = orjson.loads(raw)
    return RecordedStep(doc["said"], doc["results"], doc.get("usage") or {})


class Streamed:
    """What an earlier attempt streamed: a resumed attempt tells its turn's text from the
    start again, and only what goes beyond it reaches the stream. ``opened``: the
    earlier attempt opened the stream (``response.in_progress`` is written); ``events``:
    the events written since, for the attempt's builder to go on from
    (:meth:`~agentd.wire.responses.ResponseEvents.resume`)."""

    __slots__ = ("_left", "events", "opened")

    def __init__(
        self, opened: bool = False, text: str = "", events: Sequence[dict[str, Any]] = ()
    ) -> None:
        self.opened = opened
        self._left = len(text)  # characters of the turn's text already streamed
        self.events = list(events)

    @classmethod
    def of(cls, raw: Sequence[bytes]) -> Streamed:
        """What the stored events say: those since the last ``response.in_progress``
        (an attempt that started over opened the stream again)."""
        opened, since = False, []
        for data in raw:
            event = orjson.loads(data)
            if event["type"] == "response.in_progress":
                opened, since = True, []
            else:
                since.append(event)
        deltas = [e["delta"] for e in since if e["type"] == "response.output_text.delta"]
        return cls(opened, "".join(deltas), since)

    def rest(self, text: str) -> str:
        """The part of the next piece of the turn's text not streamed yet."""
        if self._left <= 0:
            return text
        cut = min(self._left, len(text))
        self._left -= cut
        return text[cut:]
