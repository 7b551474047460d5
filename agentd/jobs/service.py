"""The Responses API's logic: create (now or queued), look up, follow, cancel, delete,
and the running of one response's turn, which both the request path (``background:
false``) and the job runner (``background: true``) use.

Every response is stored as a record (the store's ``Records``) and its turn in a
session, so ``previous_response_id`` can continue it from any instance and WebSocket
clients on the session see it. The record is the source of truth for the response's
status; the session append is made first, so a client that sees ``completed`` can
continue the conversation at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from ..agent import Agents, Checkpoint, Interrupt, TurnRequest, TurnResult
from ..auth import Identity
from ..config import Config
from ..errors import AgentdError, BadRequest, Conflict, Forbidden, NotFound, RateLimited
from ..store import DELETED, TERMINAL, Store, job_id
from ..wire.errors import error_dict
from ..wire.responses import (
    TERMINAL_EVENTS,
    CreateRequest,
    ResponseEvents,
    ResponseView,
    new_response_id,
)
from .answers import ATTEMPT_LOOKBACK, in_request_terms, outputs_of, pending_answers
from .dead_letters import queue_limit
from .mcp import OnEvents, Server, TurnItems, check, resolve
from .records import result_fields, view_of

__all__ = ("Responses", "no_conversation")

log = logging.getLogger(__name__)

# How long a cancel waits for a running job to stop (it looks twice a second, then
# gives a silent model half a second more) before answering with the record as it is.
CANCEL_WAIT_S = 5.0


def no_conversation(conversation: str) -> NotFound:
    return NotFound(f"no conversation {conversation!r}", code="conversation_not_found")


def _status_of(done: TurnResult) -> tuple[str, str | None]:
    if done.cancelled:
        return "cancelled", None
    if done.finish_reason == "length":
        return "incomplete", "max_output_tokens"
    return "completed", None


class Responses:
    """Responses API operations over the store and the agents."""

    def __init__(self, config: Config, store: Store, agents: Agents) -> None:
        self.config = config
        self.store = store
        self.jobs = store.jobs
        self.agents = agents
        self.tenant = store.tenant
        # A credential narrowed to these sessions sees only their responses (None: all).
        self.sessions: frozenset[str] | None = None
        self._ttl = config.jobs.result_ttl_s
        self._shards = {p.name: p.queue_shards for p in config.all_partitions()}

    def for_tenant(self, tenant: str, sessions: frozenset[str] | None = None) -> Responses:
        """The same operations on ``tenant``'s responses, sessions and records; with
        ``sessions``, on the responses of those sessions only (the others are missing)."""
        if tenant == self.tenant and sessions == self.sessions:
            return self
        view = copy.copy(self)
        view.store = self.store.for_tenant(tenant)
        view.jobs = view.store.jobs
        view.tenant = tenant
        view.sessions = sessions
        return view

    def _visible(self, record: dict[str, bytes]) -> bool:
        return self.sessions is None or record.get("sid", b"").decode() in self.sessions

    # -- create -----------------------------------------------------------------------

    async def _session_for(self, req: CreateRequest) -> str:
        """The session the turn goes to: the previous response's (forked when that is
        not its latest turn), the given one, or a new one."""
        prev = req.previous_response_id
        if prev is None:
            if req.session_id is None:
                return await self._new_session(req.agent)
            try:
                return (await self.store.get_session(req.session_id)).id
            except NotFound:
                if req.conversation is None:
                    raise
                raise no_conversation(req.conversation) from None
        record = await self.jobs.read(prev)
        if record is None or not self._visible(record):
            raise NotFound(f"no response {prev!r}", code="previous_response_not_found")
        status = record.get("status", b"").decode()
        sid, rseq = record.get("sid", b"").decode(), record.get("rseq")
        if status not in TERMINAL:
            raise Conflict(
                f"response {prev!r} has not finished ({status})", code="previous_response_running"
            )
        if not req.mcp_tools and b'"mcp_approval_request"' in record.get("items", b""):
            # Its calls are run or refused by this turn, with the request's tools.
            raise BadRequest(
                f"response {prev!r} waits for the approval of MCP calls: send its mcp tools "
                "again, with an mcp_approval_response for each call to run",
                code="mcp_tools_required",
                detail={"param": "tools"},
            )
        if rseq is None or not sid:
            raise BadRequest(
                f"response {prev!r} ended {status} with no reply stored: continue from another one",
                code="previous_response_unusable",
            )
        if req.session_id is not None and req.session_id != sid:
            raise BadRequest(
                "session_id and previous_response_id name different sessions",
                code="conflicting_session",
            )
        reply_seq = int(rseq)
        info = await self.store.get_session(sid)
        if info.last_seq == reply_seq:
            return sid
        # Not the latest turn: branch a new session with the history up to it.
        kept = [
            {k: v for k, v in m.items() if k not in ("seq", "created_at")}
            for m in await self.store.history(sid, after=0)
            if m["seq"] <= reply_seq
        ]
        fork = await self._new_session(req.agent, {"forked_from": prev})
        if kept:
            await self.store.append(fork, kept)
        return fork

    async def _new_session(self, agent: str, metadata: dict[str, str] | None = None) -> str:
        if self.sessions is not None:
            # A credential narrowed to some sessions may not start others.
            raise Forbidden("this credential may use only the sessions it names")
        return (await self.store.create_session(agent=agent, metadata=metadata)).id

    async def create(self, req: CreateRequest, payer: Identity | None = None) -> ResponseView:
        """Store a new response (queued when ``background``, else in progress); one with
        ``store: false`` is not stored and runs as a stateless turn. A background one is
        charged to ``payer``'s key and tenant when it runs."""
        self.agents.get(req.agent)  # an unknown model is a 404 before anything is stored
        check(self.agents.tools, req.mcp_tools)  # a server it may not use, a 400 likewise
        view = ResponseView(
            id=new_response_id(),
            created_at=time.time(),
            status="queued" if req.background else "in_progress",
            request=req,
        )
        if not req.store:
            return view
        sid = view.session_id = await self._session_for(req)
        partition = self.config.partition_of(req.agent)
        fields = {
            "status": view.status.encode(),
            "created": b"%f" % view.created_at,
            "req": req.to_json(),
            "sid": sid.encode(),
            "part": partition.encode(),
            "bg": b"1" if req.background else b"0",
        }
        if req.background and payer is not None and payer.tenant:
            fields["payer"] = f"{payer.tenant}\n{payer.kind}\n{payer.key_id}".encode()
        # A background response's event stream opens at once: response.created, .queued.
        opening = ResponseEvents(view).created() if req.background else []
        await self.jobs.create(
            view.id, fields, self._ttl, [(e["sequence_number"], orjson.dumps(e)) for e in opening]
        )
        if req.background:
            shard = random.randrange(self._shards[partition])
            limit = queue_limit(self.config, partition)
            job = job_id(self.tenant, view.id)
            if not await self.jobs.enqueue(partition, shard, job, limit):
                await self.jobs.delete(view.id)
                raise RateLimited(
                    f"partition {partition!r} has {self.config.jobs.max_queued} jobs queued",
                    code="queue_full",
                    retry_after=1,
                )
        return view

    # -- read -------------------------------------------------------------------------

    async def get(self, rid: str) -> ResponseView:
        record = await self.jobs.read(rid)
        if record is None or "req" not in record or not self._visible(record):
            raise NotFound(f"no response {rid!r}", code="response_not_found")
        return view_of(rid, record)

    async def follow(self, rid: str, after: int = -1) -> AsyncIterator[tuple[str, bytes]]:
        """The response's events (type, JSON) after sequence number ``after``, stored
        then live, until its terminal event (each event exactly once, in order). Once
        its events have expired, an ended response's stream is its terminal event alone."""
        feed = await self.jobs.subscribe(rid)
        last = after
        try:
            while True:
                for raw in await self.jobs.events(rid, last):
                    event = orjson.loads(raw)
                    last = event["sequence_number"]
                    yield event["type"], raw
                    if event["type"] in TERMINAL_EVENTS:
                        return
                record = await self.jobs.read(rid)
                if record is None:
                    return
                if record.get("status", b"").decode() in TERMINAL:
                    seq = int(record.get("seq", b"0"))
                    if seq <= last + 1:
                        return  # nothing after `after`
                    if await self.jobs.events(rid, last):
                        continue  # written since the read above
                    # Its events expired ([jobs] events_ttl_s): end with its final state.
                    view = view_of(rid, record)
                    (event,) = ResponseEvents(view, seq - 1).closing(view)
                    yield event["type"], orjson.dumps(event)
                    return
                # Live: until a gap (missed message or reconnect) sends us back to the store.
                while True:
                    try:
                        raw = await asyncio.wait_for(feed.get(), 5.0)
                    except TimeoutError:
                        break  # look at the record again
                    if raw is None:
                        break
                    if raw == DELETED:
                        return
                    event = orjson.loads(raw)
                    seq = event["sequence_number"]
                    if seq <= last:
                        continue
                    if seq != last + 1:
                        break
                    last = seq
                    yield event["type"], raw
                    if event["type"] in TERMINAL_EVENTS:
                        return
        finally:
            await feed.close()

    # -- cancel and delete ------------------------------------------------------------

    async def cancel(self, rid: str) -> ResponseView:
        """Stop a background response and return it ``cancelled``, as OpenAI does: a
        queued one never runs; a running one stops at its next chunk (within about a
        second) keeping its partial output, and the answer waits, up to
        ``CANCEL_WAIT_S``, for it to end. Cancelling a cancelled one returns it again;
        one that ended otherwise is ``response_not_cancellable``."""
        view = await self.get(rid)
        if not view.request.background:
            raise BadRequest("only background responses can be cancelled", code="not_background")
        status = await self.jobs.cancel(rid)
        if status is None:
            raise NotFound(f"no response {rid!r}", code="response_not_found")
        if status in TERMINAL:
            if status == "cancelled":
                return await self.get(rid)
            raise BadRequest(f"cannot cancel a {status} response", code="response_not_cancellable")
        if status == "queued":
            # Nobody runs it yet: end it here unless a consumer starts it first.
            record = await self.jobs.read(rid)
            if record is not None and record.get("status") == b"queued":
                attempt = int(record.get("att", b"0"))
                ended = dataclasses.replace(view, status="cancelled")
                events = ResponseEvents(ended, int(record.get("seq", b"0")))
                closing = events.closing(ended)
                await self.jobs.finish(
                    rid,
                    attempt,
                    result_fields(ended, None),
                    [(e["sequence_number"], orjson.dumps(e)) for e in closing],
                )
        return await self._ended(rid, CANCEL_WAIT_S)

    async def _ended(self, rid: str, limit_s: float) -> ResponseView:
        """The response once it has ended, or as it is after ``limit_s`` (a job whose
        worker died ends when another consumer takes it over, ``[jobs] lease_s`` later)."""
        record = await self.jobs.read(rid)
        if record is not None and record.get("status", b"").decode() not in TERMINAL:
            after = int(record.get("seq", b"0")) - 1  # the last event written

            async def until_terminal() -> None:
                async with contextlib.aclosing(self.follow(rid, after)) as events:
                    async for _ in events:
                        pass  # follow ends with the terminal event

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until_terminal(), limit_s)
        return await self.get(rid)

    async def delete(self, rid: str) -> None:
        if self.sessions is not None:
            await self.get(rid)  # one of the sessions' responses, or missing
        await self.jobs.cancel(rid)
        if not await self.jobs.delete(rid):
            raise NotFound(f"no response {rid!r}", code="response_not_found")

    # -- running ----------------------------------------------------------------------

    def runs_tools(self, req: CreateRequest) -> bool:
        """Whether the response's output may have tool items next to the message: of
        server-side tools (the request's, the agent's, or those it approves) or of the
        client's function tools."""
        if req.mcp_tools or req.approvals or req.params.get("tools"):
            return True
        return self.agents.tools is not None and bool(self.agents.get(req.agent).tools)

    def events_for(self, view: ResponseView, first_seq: int = 0) -> ResponseEvents:
        """The builder of the response's streaming events, from ``first_seq``."""
        return ResponseEvents(view, first_seq, tools=self.runs_tools(view.request))

    def turn_request(
        self,
        view: ResponseView,
        identity: Identity | None = None,
        checkpoint: Checkpoint | None = None,
        servers: list[Server] | None = None,
    ) -> TurnRequest:
        req = view.request
        turn = TurnRequest(req.agent, req.chat_messages(), view.session_id, dict(req.params))
        turn.tool_servers = tuple(s.tool for s in servers or ())
        # Calls that wait for approval end the turn, as calls of the client's function
        # tools do: they are the caller's to tell.
        turn.tool_calls = bool(req.params.get("tools")) or any(
            s.tool.held != frozenset() for s in servers or ()
        )
        turn.identity = identity
        # The response id is the turn id: a later attempt finds a turn already stored.
        turn.turn_id = view.id
        turn.tenant = self.tenant
        turn.may_repeat = True
        turn.checkpoint = checkpoint
        if req.background:
            turn.request_class = self.agents.get(req.agent).background_class
        return turn

    async def stored_turn(self, view: ResponseView) -> dict[str, Any] | None:
        """The assistant message an earlier attempt of this response stored, if any."""
        if view.session_id is None:
            return None
        messages = await self.store.history(view.session_id, limit=ATTEMPT_LOOKBACK)
        for message in reversed(messages):
            if message.get("turn") == view.id and message.get("role") == "assistant":
                return message
        return None

    async def run_turn(
        self,
        view: ResponseView,
        *,
        deadline: float,
        interrupt: Interrupt | None = None,
        events: ResponseEvents | None = None,
        on_events: OnEvents | None = None,
        identity: Identity | None = None,
        on_limits: Callable[[Mapping[str, str]], None] | None = None,
        checkpoint: Checkpoint | None = None,
        text_filter: Callable[[str], str] | None = None,
    ) -> tuple[ResponseView, int | None]:
        """Run the response's turn; ``on_events(events)`` gets its streaming events
        as they come (built by ``events``, :meth:`events_for` when not given). Returns
        the final view and the stored reply's seq. ``identity``: whose limits apply;
        ``on_limits(headers)`` gets their x-ratelimit-* headers once admitted;
        ``checkpoint`` (a job's) records the steps of the agent's tool loop, and
        ``text_filter`` sees every piece of the text first and returns what of it to
        stream (a resumed job's attempt skips what its stream already holds)."""
        req = view.request
        tools = self.runs_tools(req)
        servers = []
        if req.mcp_tools:
            servers = resolve(self.agents.tools, self.agents.get(req.agent), req.mcp_tools)
        listener = None
        if tools or on_events is not None or on_limits is not None:
            events = events or self.events_for(view)
            listener = TurnItems(view.id, events, servers, on_events, on_limits, text_filter)
        turn = self.turn_request(view, identity, checkpoint, servers)
        outputs = bool(outputs_of(req))
        if (req.previous_response_id is not None and (listener is not None or outputs)) or (
            outputs and req.session_id is not None
        ):
            # The calls the previous response (or the session) waits for are answered first.
            turn.messages[:0] = await pending_answers(
                self.store, self.agents, view, servers, listener, deadline
            )
            if listener is not None:
                listener.listed = not req.approvals
        try:
            done = await self.agents.run(
                turn, deadline=deadline, interrupt=interrupt, listener=listener
            )
        except BadRequest as exc:
            raise in_request_terms(exc, req) from None
        status, reason = _status_of(done)
        final = dataclasses.replace(
            view,
            status=status,
            output_text=done.text,
            usage=dict(done.usage) or None,
            incomplete_reason=reason,
            completed_at=time.time(),
        )
        if done.tool_calls and listener is not None:
            # It ends with calls that wait for the client's approval (of the turn's MCP
            # tools), and the client's function calls to run: any other call too (an
            # upstream's own tool), which the client may answer with an error.
            held = [c for c in done.tool_calls if listener.serves(c)]
            await listener.function_calls([c for c in done.tool_calls if not listener.serves(c)])
            await listener.approval_requests(held)
            final.output_text = done.text or None
        if tools and events is not None:
            final.items, final.message_at = list(events.items), events.message_at
        return final, done.seq

    async def run_now(
        self,
        view: ResponseView,
        *,
        deadline: float,
        events: ResponseEvents | None = None,
        on_events: OnEvents | None = None,
        identity: Identity | None = None,
        on_limits: Callable[[Mapping[str, str]], None] | None = None,
    ) -> ResponseView:
        """A foreground response: run it in the request (within ``identity``'s limits)
        and store the result."""
        run = functools.partial(
            self.run_turn, deadline=deadline, events=events, on_events=on_events,
            identity=identity, on_limits=on_limits,
        )  # fmt: skip
        if not view.request.store:
            final, _ = await run(view)
            return final
        try:
            final, reply_seq = await run(view)
        except AgentdError as exc:
            failed = dataclasses.replace(view, status="failed", error=error_dict(exc))
            if events is not None:  # streamed: stored as its stream ended
                failed = events.finished(failed)
            with contextlib.suppress(AgentdError):
                await self.jobs.finish(view.id, 0, result_fields(failed, None), [])
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                await self.jobs.delete(view.id)
            raise
        await self.jobs.finish(view.id, 0, result_fields(final, reply_seq), [])
        return final
