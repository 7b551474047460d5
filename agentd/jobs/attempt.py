"""One attempt of one job, from its start on the record to its end: run the turn (its
deltas written in batches, a cancel request looked for meanwhile), store the result,
send the webhook, then acknowledge the job.

A failing attempt is retried (after a backoff) until ``[jobs] max_attempts``, then the
response fails and the job moves to the dead-letter stream; an error no retry can fix
fails it at once. Every write of an attempt is fenced by its number: an attempt a newer
one overtook stops without writing anything more.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import os
import random
import time
from typing import Any

import orjson

from ..agent import Interrupt
from ..aio import end_if_cancelled
from ..auth import Identity
from ..config import Config
from ..errors import AgentdError, Internal
from ..metrics import JobMetrics
from ..store import Delivery, Jobs, job_of
from ..wire.errors import error_dict
from ..wire.responses import ResponseEvents, ResponseView
from .mcp import recorded_ends
from .records import payer_of, result_fields, view_of
from .service import Responses
from .steps import FencedOut, StepLog, Streamed
from .webhooks import WebhookSender, decode_secret, event_id_for, webhook_event

__all__ = ("Attempts",)

log = logging.getLogger(__name__)

# Streamed deltas are written to the store in batches: at most this often, or when
# this many events wait.
FLUSH_INTERVAL_S = 0.05
FLUSH_EVENTS = 64
# A running job looks for a cancel request this often; after one, the model may stay
# silent this long before the job is stopped where it is.
CANCEL_POLL_S = 0.5
CANCEL_GRACE_S = 0.5
# A failed attempt waits this long (doubling per attempt, capped) before its retry.
RETRY_BACKOFF_S = 0.5
RETRY_BACKOFF_MAX_S = 30.0


def _permanent(exc: AgentdError) -> bool:
    """Errors no retry can fix: the request itself is wrong (a 4xx, but a timeout, a
    busy session (409 with ``concurrent_turns = "reject"``) or a rate limit)."""
    return exc.status < 500 and exc.status not in (408, 409, 429)


class Attempts:
    """Runs attempts of this worker's jobs as ``consumer``; owns the webhook sender."""

    def __init__(
        self,
        config: Config,
        responses: Responses,
        jobs: Jobs,
        consumer: str,
        metrics: JobMetrics | None = None,
    ) -> None:
        self.config = config
        self.responses = responses
        self.jobs = jobs
        self.consumer = consumer
        self.metrics = metrics
        secret_text = os.environ.get(config.jobs.webhook_secret_env, "")
        self._hooks: WebhookSender | None = None
        if secret_text:
            self._hooks = WebhookSender(decode_secret(secret_text))
        self._hook_urls = {a.name: a.webhook_url or config.jobs.webhook_url for a in config.agents}

    async def close(self) -> None:
        if self._hooks is not None:
            await self._hooks.close()

    def for_tenant(self, tenant: str) -> Attempts:
        """Attempts on ``tenant``'s jobs: its records, sessions and turns (the queue and
        the webhook sender are the same)."""
        if not tenant:
            return self
        view = copy.copy(self)
        view.responses = self.responses.for_tenant(tenant)
        view.jobs = view.responses.jobs
        return view

    async def run(self, delivery: Delivery) -> None:
        """Begin a new attempt on the job's record, in the tenant its id names, and
        carry it to its end."""
        tenant, rid = job_of(delivery.job_id)
        await self.for_tenant(tenant)._begin(delivery, rid)

    async def _begin(self, delivery: Delivery, rid: str) -> None:
        start = await self.jobs.start(rid, self.config.jobs.max_attempts, self.consumer)
        if start.verdict == "gone":
            await self.jobs.ack(delivery)
            return
        if start.verdict == "done":
            await self._report(rid)
            await self.jobs.ack(delivery)
            return
        record = start.record
        view = view_of(rid, record)
        if start.verdict in ("cancel", "exhausted"):
            if start.verdict == "cancel":
                final = dataclasses.replace(view, status="cancelled")
            else:
                error = orjson.loads(record.get("lasterr", b"null")) or {
                    "code": "job_failed",
                    "message": "the job's worker stopped",
                }
                final = dataclasses.replace(view, status="failed", error=error)
            closing = ResponseEvents(final, start.seq).closing(final)
            dead = start.verdict == "exhausted"
            await self._conclude(delivery, start.attempt, final, closing, dead=dead)
            return
        if self.metrics is not None:
            delay = max(0.0, time.time() - delivery.enqueued_at)
            self.metrics.start_delay.labels(delivery.partition).observe(delay)
        payer = payer_of(record)
        limiter = self.responses.agents.limiter
        if limiter is not None:
            payer = await limiter.payer(payer)  # with its key's current limits
        await self._run(delivery, view, start.attempt, start.seq, payer)

    async def _run(
        self,
        delivery: Delivery,
        view: ResponseView,
        attempt: int,
        seq: int,
        payer: Identity | None = None,
    ) -> None:
        rid = view.id
        running = dataclasses.replace(view, status="in_progress")
        events = self.responses.events_for(running, seq)
        writer = _EventWriter(self.jobs, rid, attempt)
        try:
            steps = await StepLog.load(self.jobs, rid, attempt)
            # A loop that goes on after recorded steps goes on with the stream an earlier
            # attempt opened; any other attempt opens it again.
            streamed = Streamed()
            if steps.recorded():
                streamed = Streamed.of(await self.jobs.events(rid, -1))
            if streamed.opened:
                events.resume(streamed.events)  # its items, and what of them it told
            else:
                # Written with the first deltas, or after FLUSH_INTERVAL_S if none come.
                writer.add(events.started())
            previous = await self.responses.stored_turn(running) if attempt > 1 else None
            if previous is not None:
                # An earlier attempt stored the turn, then stopped before the record.
                final = dataclasses.replace(
                    running,
                    status="cancelled" if previous.get("status") == "cancelled" else "completed",
                    output_text=previous.get("content") or "",
                    completed_at=time.time(),
                )
                writer.add(recorded_ends(events, rid, steps.recorded()))
                if rest := streamed.rest(final.output_text):
                    writer.add(events.text(rest))
                reply_seq: int | None = previous["seq"]
            else:
                final, reply_seq = await self._run_turn(
                    running, events, writer, payer, steps, streamed
                )
        except FencedOut:
            log.info("job %s attempt %d was fenced out by a newer one", rid, attempt)
            return
        except AgentdError as exc:
            with contextlib.suppress(FencedOut, AgentdError):
                await writer.flush()
            await self._failed(delivery, running, attempt, events, exc)
            return
        # The events not yet written go with the result, in one step.
        closing = events.closing(final)
        final = events.finished(final)  # a turn stopped where it was: its tools' items
        await self._conclude(delivery, attempt, final, closing, reply_seq, writer.take())

    async def _run_turn(
        self,
        view: ResponseView,
        events: ResponseEvents,
        writer: _EventWriter,
        payer: Identity | None = None,
        steps: StepLog | None = None,
        streamed: Streamed | None = None,
    ) -> tuple[ResponseView, int | None]:
        """Run the turn (its loop's steps recorded in ``steps``), streaming its text but
        what ``streamed`` says an earlier attempt streamed."""
        interrupt = Interrupt()
        streamed = streamed or Streamed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.jobs.timeout_s
        parts: list[str] = []

        def text_filter(text: str) -> str:
            parts.append(text)
            return streamed.rest(text)

        async def on_events(batch: list[dict[str, Any]]) -> None:
            writer.add(batch)
            if writer.due():
                await writer.flush()

        work = asyncio.create_task(
            self.responses.run_turn(
                view,
                deadline=deadline,
                interrupt=interrupt,
                events=events,
                on_events=on_events,
                identity=payer,
                checkpoint=steps,
                text_filter=text_filter,
            )
        )
        try:
            checked = loop.time()
            while True:
                # Stopped by its holder (taken over, closing), even if the cancel was
                # dropped inside a store call (see end_if_cancelled).
                end_if_cancelled()
                wait = FLUSH_INTERVAL_S if writer.pending else CANCEL_POLL_S
                finished, _ = await asyncio.wait({work}, timeout=wait)
                if finished:
                    return work.result()
                await writer.flush()  # what a slow model has said so far
                if loop.time() - checked >= CANCEL_POLL_S:
                    checked = loop.time()
                    if await self.jobs.cancel_asked(view.id):
                        break
            interrupt.ask()  # ends at the next chunk, stored as cancelled
            finished, _ = await asyncio.wait({work}, timeout=CANCEL_GRACE_S)
            if finished:
                return work.result()
            work.cancel()  # the model is silent: stop here, keep what came
            with contextlib.suppress(asyncio.CancelledError):
                await work
            text = "".join(parts)
            return (
                dataclasses.replace(
                    view, status="cancelled", output_text=text, completed_at=time.time()
                ),
                None,
            )
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
            elif not work.cancelled():
                # Left by another error (a flush on a store in a failover) just as the
                # turn failed too: that one is the attempt's; this one is only read.
                work.exception()

    async def _failed(
        self,
        delivery: Delivery,
        view: ResponseView,
        attempt: int,
        events: ResponseEvents,
        exc: AgentdError,
    ) -> None:
        error = error_dict(exc)
        rid = view.id
        if _permanent(exc) or attempt >= self.config.jobs.max_attempts:
            final = dataclasses.replace(view, status="failed", error=error)
            closing = events.closing(final)
            final = events.finished(final)  # with its tools' items, as the stream ended
            await self._conclude(delivery, attempt, final, closing, dead=not _permanent(exc))
            return
        log.warning("job %s attempt %d failed (%s): retrying", rid, attempt, exc.message)
        if self.metrics is not None:
            self.metrics.retries.labels(delivery.partition).inc()
        if not await self.jobs.update(rid, attempt, {"lasterr": orjson.dumps(error)}):
            return  # fenced out: a newer attempt owns the job
        delay = min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S * 2 ** (attempt - 1))
        await asyncio.sleep(delay * (0.5 + random.random() / 2))
        await self.jobs.retry(delivery, failed=True)

    async def _conclude(
        self,
        delivery: Delivery,
        attempt: int,
        final: ResponseView,
        closing: list[dict[str, Any]],
        reply_seq: int | None = None,
        before: list[tuple[int, bytes]] | None = None,
        *,
        dead: bool = False,
    ) -> None:
        """Store the result with the closing events (after ``before``, the events not
        yet written), send the webhook, then acknowledge the job, or move it to the dead
        letters. An attempt fenced out by a newer one stops at the first step: the
        delivery is the newer attempt's now, and only it may acknowledge it."""
        rid = final.id
        payloads = [*(before or ()), *((e["sequence_number"], orjson.dumps(e)) for e in closing)]
        if not await self.jobs.finish(rid, attempt, result_fields(final, reply_seq), payloads):
            log.info("job %s attempt %d was fenced out; its result is dropped", rid, attempt)
            return
        if self.metrics is not None:
            partition = self.config.partition_of(final.request.agent)
            self.metrics.finished.labels(partition, final.status).inc()
        await self._report(rid)
        if dead:
            await self.jobs.bury(delivery, _dumps_error(final.error), attempt)
        else:
            await self.jobs.ack(delivery)

    # -- webhooks ---------------------------------------------------------------------

    async def _report(self, rid: str) -> None:
        """Send the ended response's webhook unless it was sent; the job is acknowledged
        after this, so a worker that dies before it leaves the job to be reclaimed and
        the webhook sent again (at least once; the webhook-id stays the same)."""
        if self._hooks is None:
            return
        record = await self.jobs.read(rid)
        if record is None or record.get("hook") == b"sent":
            return
        view = view_of(rid, record)
        url = self._hook_urls.get(view.request.agent) or self.config.jobs.webhook_url
        if not url:
            return
        kind = f"response.{view.status}"
        event_id = event_id_for(rid, kind)
        event = webhook_event(kind, rid, int(view.completed_at or time.time()), event_id=event_id)
        if await self._hooks.deliver(url, event, event_id=event_id):
            await self.jobs.update(rid, int(record.get("att", b"0")), {"hook": b"sent"})


def _dumps_error(error: dict[str, Any] | None) -> bytes:
    return orjson.dumps(error or Internal("failed").to_dict()["error"])


class _EventWriter:
    """Batches an attempt's events into few store writes (fenced by the attempt)."""

    def __init__(self, jobs: Jobs, rid: str, attempt: int) -> None:
        self.jobs, self.rid, self.attempt = jobs, rid, attempt
        self.pending: list[tuple[int, bytes]] = []
        self.last = time.monotonic()
        # One write at a time, in order: the store refuses an event id below the last.
        self._lock = asyncio.Lock()

    def add(self, events: list[dict[str, Any]]) -> None:
        self.pending += [(e["sequence_number"], orjson.dumps(e)) for e in events]

    def due(self) -> bool:
        return len(self.pending) >= FLUSH_EVENTS or time.monotonic() - self.last >= FLUSH_INTERVAL_S

    def take(self) -> list[tuple[int, bytes]]:
        """The events not written yet (the caller writes them)."""
        batch, self.pending = self.pending, []
        return batch

    async def flush(self) -> None:
        async with self._lock:
            self.last = time.monotonic()
            if not self.pending:
                return
            batch, self.pending = self.pending, []
            if not await self.jobs.emit(self.rid, self.attempt, batch):
                raise FencedOut
