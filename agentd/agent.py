"""One turn of an agent: session → model → persist → publish, whatever the wire format.

A turn with a session takes the session's turn lease (and reads its history) in one
store round trip, streams the model's reply, and appends the new messages and the
reply while releasing the lease in a second one; the append publishes the session's
event. Turns of one session therefore run one at a time across every instance
(``[sessions] concurrent_turns`` says what a second one gets). A turn without a session
touches no store at all.

The HTTP and WebSocket layers iterate :meth:`Agents.run` and translate what it yields:
``str`` deltas while the model streams, then one :class:`TurnDone`; a caller that does
not stream awaits :meth:`Agents.complete` for the :class:`TurnDone` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import fastpath
from .backends import INTERACTIVE, Backends, ChatRequest, Chunk, Pool
from .cache import ResponseCache, Served, cacheable
from .config import AgentConfig, Config
from .errors import BadRequest, Conflict, NotFound, Overloaded, UpstreamTimeout
from .metrics import Metrics
from .store import Store
from .store.base import TurnLease

__all__ = ("Agents", "Interrupt", "Timings", "TurnDone", "TurnRequest", "new_turn_id")

log = logging.getLogger(__name__)

# Fields of a stored message that are ours, not the model's.
_STORE_FIELDS = ("seq", "created_at", "status", "turn")
# How long a turn waiting for its session sleeps between tries (grows to the max).
_WAIT_MIN, _WAIT_MAX = 0.005, 0.1


@dataclass(slots=True)
class TurnRequest:
    agent: str
    messages: list[dict[str, Any]]
    session_id: str | None = None
    # Client generation parameters; they override the agent's own.
    params: dict[str, Any] = field(default_factory=dict)
    # Set by the turn: hit-l1 | hit-l2 | hit-l3 | miss | bypass (for X-Cache).
    cache: str = "bypass"
    # Stored on the turn's messages, so a connection can tell its own turns' events.
    # ("" = drawn when the turn is stored: stateless turns never pay for one).
    turn_id: str = ""
    # The model call's class (the backend's capacity and policy per class): only
    # interactive turns count toward the worker's and the partition's turn limits.
    request_class: str = INTERACTIVE


@dataclass(slots=True)
class Timings:
    """Where a turn's time went, in seconds (for Server-Timing and /metrics)."""

    session: float = 0.0
    upstream_ttft: float = 0.0
    upstream: float = 0.0
    persist: float = 0.0

    def stages(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__slots__}

    def header(self, parse: float = 0.0) -> str:
        """The ``Server-Timing`` value: parse, then every stage, in milliseconds."""
        # One %-format (the same text as each value formatted with :.2f): it runs on
        # every reply.
        return _SERVER_TIMING % (
            parse * 1000,
            self.session * 1000,
            self.upstream_ttft * 1000,
            self.upstream * 1000,
            self.persist * 1000,
        )


_SERVER_TIMING = ", ".join(f"{k};dur=%.2f" for k in ("parse", *Timings.__slots__))


@dataclass(slots=True)
class TurnDone:
    """The end of a turn: what was said, and what was stored (empty without a session)."""

    text: str
    finish_reason: str
    usage: dict[str, Any]
    node: str
    model: str
    stored: list[dict[str, Any]]
    timings: Timings
    cancelled: bool = False

    @property
    def seq(self) -> int | None:
        return self.stored[-1]["seq"] if self.stored else None


def _upstream_message(message: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in _STORE_FIELDS}


def _stages_run(timings: Timings, session: bool, replied: bool) -> dict[str, float]:
    """The stages a turn went through, for /metrics: a stateless turn has no session or
    persist stage, a reply without text no first token."""
    stages = {"upstream": timings.upstream}
    if replied:
        stages["upstream_ttft"] = timings.upstream_ttft
    if session:
        stages["session"] = timings.session
        stages["persist"] = timings.persist
    return stages


@dataclass(slots=True)
class _Plan:
    """A turn's model call before it runs: the request, its pool and its cache key (None
    when the reply is not cached)."""

    agent: AgentConfig
    request: ChatRequest
    pool: Pool
    key: bytes | None
    # Set when L1 was already asked and missed: the turn asks the levels below.
    l1_missed: bool = False


def new_turn_id() -> str:
    return "t_" + secrets.token_urlsafe(9)


class Interrupt:
    """Asks a running turn to stop at its next chunk: set by the lease keeper when another
    turn of the session asks, or by whoever started the turn (a cancelled job)."""

    __slots__ = ("asked",)

    def __init__(self) -> None:
        self.asked = False


class Agents:
    """The configured agents, and the running of their turns."""

    def __init__(
        self,
        config: Config,
        store: Store,
        backends: Backends,
        metrics: Metrics | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.metrics = metrics
        self.store = store
        self.backends = backends
        self._agents = {a.name: a for a in config.agents}
        self._inflight = 0
        self._max_inflight = config.server.max_inflight_turns
        # Interactive turns per partition, for the partitions that cap them.
        self._partition_of = {a.name: config.partition_of(a.name) for a in config.agents}
        self._partition_max = {
            p.name: p.max_inflight_turns for p in config.all_partitions() if p.max_inflight_turns
        }
        self._partition_inflight = dict.fromkeys(self._partition_max, 0)
        # When an interactive turn last began or ended (time.monotonic()): a worker
        # answering many short turns is busy with people although few run at any instant.
        self.last_interactive = -math.inf
        self._lease_s = config.sessions.turn_lease
        self._policy = config.sessions.concurrent_turns

    def get(self, name: str) -> AgentConfig:
        agent = self._agents.get(name)
        if agent is None:
            raise NotFound(f"no agent named {name!r}", code="model_not_found")
        return agent

    def all(self) -> Sequence[AgentConfig]:
        return list(self._agents.values())

    @property
    def inflight(self) -> int:
        return self._inflight

    def admit(self, agent: str | None = None) -> None:
        """Refuse at once when this worker already runs its maximum of interactive turns,
        or of the agent's partition's."""
        if self._inflight >= self._max_inflight:
            raise Overloaded(f"this worker runs {self._inflight} turns, its maximum", retry_after=1)
        partition = self._partition_of.get(agent or "")
        if partition in self._partition_max:
            running = self._partition_inflight[partition]
            if running >= self._partition_max[partition]:
                raise Overloaded(
                    f"this worker runs {running} turns of partition {partition!r}, its maximum",
                    retry_after=1,
                )

    def _count(self, req: TurnRequest, step: int) -> None:
        self._inflight += step
        self.last_interactive = time.monotonic()
        partition = self._partition_of[req.agent]
        if partition in self._partition_inflight:
            self._partition_inflight[partition] += step

    def run(
        self, req: TurnRequest, *, deadline: float, interrupt: Interrupt | None = None
    ) -> AsyncIterator[str | TurnDone]:
        """Run one turn: yields text deltas, then a :class:`TurnDone`. Setting
        ``interrupt.asked`` ends it at its next chunk, as a cancelled turn.

        Nothing runs (and nothing is refused) before the first item is asked for."""
        # The turn's own generator, not one wrapping it: each layer of async generator
        # costs every item a resume, and every turn the event loop's generator hooks.
        return self._turn(req, deadline, interrupt or Interrupt(), None)

    async def complete(
        self, req: TurnRequest, *, deadline: float, interrupt: Interrupt | None = None
    ) -> TurnDone:
        """Run one turn to its end: the :class:`TurnDone` that :meth:`run` ends with,
        for a caller that does not stream. Same errors, metrics and storing as ``run``."""
        agent = self._admit_turn(req)
        plan = None
        if req.session_id is None:
            plan = self._plan(agent, req, ())
            if plan.key is not None and self.cache is not None:
                # A stateless L1 hit, the hottest turn there is, is answered here: no
                # generator, no await (so no in-flight count either: nothing can see it).
                served = self.cache.lookup_l1(plan.key)
                if served is not None:
                    req.cache = served.level
                    return self._replayed(plan, served, interrupt or Interrupt())
                plan.l1_missed = True
        events = self._turn(req, deadline, interrupt or Interrupt(), plan)
        async with contextlib.aclosing(events):
            async for item in events:
                if isinstance(item, TurnDone):
                    return item
        raise AssertionError("a turn ends with a TurnDone")  # pragma: no cover

    def _admit_turn(self, req: TurnRequest) -> AgentConfig:
        agent = self.get(req.agent)
        if not req.messages:
            raise BadRequest("messages must not be empty", code="invalid_request")
        if req.request_class == INTERACTIVE:
            self.admit(agent.name)
            self.last_interactive = time.monotonic()
        return agent

    def _plan(
        self, agent: AgentConfig, req: TurnRequest, history: Sequence[Mapping[str, Any]]
    ) -> _Plan:
        upstream: list[dict[str, Any]] = []
        if agent.system_prompt:
            upstream.append({"role": "system", "content": agent.system_prompt})
        if history:
            upstream.extend(_upstream_message(m) for m in history)
        upstream.extend(req.messages)
        request = ChatRequest(
            model=agent.model or agent.name,
            messages=upstream,
            params={**agent.params, **req.params},
        )
        pool = self.backends.get(agent.backend)
        key = None
        if self.cache is not None and cacheable(agent.cache, request.params):
            key = fastpath.cache_key(agent.name, request.model, upstream, request.params)
        return _Plan(agent, request, pool, key)

    def _replayed(self, plan: _Plan, served: Served, interrupt: Interrupt) -> TurnDone:
        """A stateless turn answered from the cache, as :meth:`_turn` would replay it."""
        loop = asyncio.get_running_loop()
        timings = Timings()
        parts: list[str] = []
        reply = served.reply
        finish, usage, node, cancelled = reply.finish_reason, reply.usage, reply.node, False
        started = loop.time()
        for text in reply.chunks:
            if text:
                if not parts:
                    timings.upstream_ttft = loop.time() - started
                parts.append(text)
            if interrupt.asked:
                finish, usage, node, cancelled = "cancelled", {}, "", True
                break
        timings.upstream = loop.time() - started
        text = "".join(parts)
        return self._done(plan, text, finish, usage, node, [], timings, cancelled, False)

    def _done(
        self,
        plan: _Plan,
        text: str,
        finish: str,
        usage: dict[str, Any],
        node: str,
        stored: list[dict[str, Any]],
        timings: Timings,
        cancelled: bool,
        session: bool,
    ) -> TurnDone:
        if self.metrics is not None:
            self.metrics.observe_turn(_stages_run(timings, session, bool(text)))
        return TurnDone(text, finish, usage, node, plan.request.model, stored, timings, cancelled)

    async def _turn(
        self, req: TurnRequest, deadline: float, interrupt: Interrupt, plan: _Plan | None
    ) -> AsyncIterator[str | TurnDone]:
        """The turn behind :meth:`run`; ``plan`` is given by :meth:`complete`, which
        already checked and planned a stateless turn (and asked L1)."""
        agent = plan.agent if plan is not None else self._admit_turn(req)
        counted = req.request_class == INTERACTIVE
        if counted:
            self._count(req, 1)
        try:
            timings = Timings()
            loop = asyncio.get_running_loop()
            lease: TurnLease | None = None
            if req.session_id is not None:
                started = loop.time()
                lease = await self._take_session(req.session_id, agent.history, deadline)
                timings.session = loop.time() - started
                plan = self._plan(agent, req, lease.history)
            elif plan is None:
                plan = self._plan(agent, req, ())
            request, pool, key = plan.request, plan.pool, plan.key

            def call_model() -> AsyncIterator[Chunk]:
                return pool.stream(
                    request,
                    session_id=req.session_id,
                    deadline=deadline,
                    request_class=req.request_class,
                )

            source: AsyncIterator[Any] | None = None
            served: Served | None = None
            req.cache = "bypass"
            cache = self.cache
            if key is not None and cache is not None:
                if not plan.l1_missed:
                    served = cache.lookup_l1(key)
                if served is None:
                    served = await cache.lookup_below(key, agent.cache)
                if served is not None:
                    req.cache = served.level
                else:
                    req.cache = "miss"
                    source = cache.serve(key, agent.cache, call_model, deadline)
            else:
                source = call_model()
            parts: list[str] = []
            finish, usage, node, cancelled = "stop", {}, "", False
            renewer = None
            if lease is not None:
                renewer = asyncio.create_task(
                    self._keep_lease(req.session_id, lease.token, interrupt)  # type: ignore[arg-type]
                )
            started = loop.time()
            try:
                if served is not None:
                    # A cached reply is replayed here, chunk by chunk as it was streamed.
                    for text in served.reply.chunks:
                        if text:
                            if not parts:
                                timings.upstream_ttft = loop.time() - started
                            parts.append(text)
                            yield text
                        if interrupt.asked:
                            cancelled, finish = True, "cancelled"
                            break
                    else:
                        reply = served.reply
                        finish, usage, node = reply.finish_reason, reply.usage, reply.node
                else:
                    assert source is not None
                    async with contextlib.aclosing(source):
                        async for item in source:
                            if isinstance(item, Served):
                                finish, usage = item.reply.finish_reason, item.reply.usage
                                node = item.reply.node
                                continue
                            text = item if isinstance(item, str) else item.text
                            if text:
                                if not parts:
                                    timings.upstream_ttft = loop.time() - started
                                parts.append(text)
                                yield text
                            if not isinstance(item, str):
                                finish = item.finish_reason or finish
                                usage = item.usage or usage
                                node = item.node or node
                            # Checked between chunks (no task per chunk on this hot loop):
                            # a turn asked to stop ends at its next chunk, or at its
                            # deadline if the model is silent.
                            if interrupt.asked:
                                cancelled, finish = True, "cancelled"
                                break
            except BaseException:
                if lease is not None:
                    await self._let_go(req.session_id, lease.token)  # type: ignore[arg-type]
                raise
            finally:
                if renewer is not None:
                    renewer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await renewer
            timings.upstream = loop.time() - started
            text = "".join(parts)

            stored: list[dict[str, Any]] = []
            if lease is not None:
                turn = req.turn_id = req.turn_id or new_turn_id()
                said: dict[str, Any] = {"role": "assistant", "content": text, "turn": turn}
                if cancelled:
                    said["status"] = "cancelled"
                new = [{**m, "turn": turn} for m in req.messages if m.get("role") != "system"]
                sid: str = req.session_id  # type: ignore[assignment]
                started = loop.time()
                stored = await self.store.end_turn(sid, lease.token, [*new, said])
                timings.persist = loop.time() - started
            yield self._done(
                plan, text, finish, usage, node, stored, timings, cancelled, lease is not None
            )
        finally:
            if counted:
                self._count(req, -1)

    async def _take_session(self, sid: str, last: int, deadline: float) -> TurnLease:
        """Take the session's turn lease, as ``[sessions] concurrent_turns`` says."""
        loop = asyncio.get_running_loop()
        wait = _WAIT_MIN
        asked = False
        while True:
            lease = await self.store.begin_turn(sid, last, self._lease_s)
            if lease is not None:
                return lease
            if self._policy == "reject":
                raise Conflict("another turn of this session is running", code="session_busy")
            if self._policy == "interrupt" and not asked:
                asked = await self.store.interrupt_turn(sid)
            if loop.time() + wait > deadline:
                raise UpstreamTimeout(
                    "timed out waiting for the session's running turn", code="session_busy"
                )
            await asyncio.sleep(wait * (0.5 + random.random()))
            wait = min(_WAIT_MAX, wait * 2)

    async def _keep_lease(self, sid: str, token: int, interrupt: Interrupt) -> None:
        """Renew the lease while the turn runs; note when another turn asks it to stop."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            state = await self.store.renew_turn(sid, token, self._lease_s)
            if state == "interrupted":
                interrupt.asked = True
                return
            if state == "lost":
                # Finish the reply anyway: end_turn then refuses to store it (turn_lost).
                log.warning("turn on session %s lost its lease (stalled?)", sid)
                return

    async def _let_go(self, sid: str, token: int) -> None:
        with contextlib.suppress(Exception):
            await self.store.end_turn(sid, token, [])
