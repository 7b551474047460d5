"""One turn of an agent, whatever the wire format:

    admit → (session: take the lease, read the history) → (limits) → plan the model
    call → reply (from the cache, or the model through the cache) → (store the turn) → result

A turn with a session holds the session's lease (:mod:`.lease`) from its first store
round trip, which also reads the history, to its second, which appends the new messages
and the reply and publishes the session's event. A turn without a session touches no
store at all, and an L1 cache hit (:mod:`agentd.cache`) returns without suspending.

A turn whose request names an identity with limits starts their check (one store call,
:mod:`agentd.auth.limits`) before the session's first round trip and waits for it after,
so the two overlap; the check's ticket is settled on every path.

Callers that stream pass a :class:`~.types.Listener`; the others await the
:class:`~.types.TurnResult` alone. Both take the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from .. import fastpath
from ..aio import in_task
from ..auth import Limiter, Ticket
from ..backends import INTERACTIVE, Backends, ChatRequest, Chunk, Pool
from ..cache import CachedReply, ResponseCache, Served, cacheable
from ..config import AgentConfig, Config
from ..errors import AgentdError, BadRequest
from ..metrics import Metrics
from ..schema import check_tool_messages, pending_calls
from ..store import Store
from ..tools import Tools, ToolSet
from .admission import Admission
from .builtins import Builtins, builtin_specs
from .lease import Held, Interrupt, Leases
from .listening import admitted, admitted_now, listed
from .loop import STEP_SEPARATOR, ClientView, ToolLoop, merge_tools
from .registry import Registry
from .reply import (
    Reply,
    messages_to_store,
    replay_calls,
    stored_reply,
    summed_usage,
    text_chars,
    told_again,
    unrelayed,
)
from .types import (
    NO_HEADERS,
    Listener,
    ReplayTimings,
    Timings,
    TurnRequest,
    TurnResult,
    new_turn_id,
)

__all__ = ("Agents", "Prepared")


@dataclass(slots=True)
class _Plan:
    """A turn's model call before it runs: the request, its pool and its cache key (None
    when the reply is not cached)."""

    request: ChatRequest
    pool: Pool
    key: bytes | None
    # The agent's tool loop (None: the agent has no tools, the turn is one model call).
    loop: ToolLoop | None = None


# What :meth:`Agents.prepare` gives a caller: a plan, opaque to it.
Prepared = _Plan


class Agents:
    """The configured agents, and the running of their turns."""

    def __init__(
        self,
        config: Config,
        store: Store,
        backends: Backends,
        metrics: Metrics | None = None,
        cache: ResponseCache | None = None,
        limiter: Limiter | None = None,
        tools: Tools | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.backends = backends
        self.metrics = metrics
        self.cache = cache
        self.limiter = limiter
        self.tools = tools
        self.registry = Registry(config.agents)
        self.admission = Admission(config)
        self.leases = Leases(config.sessions)
        self.builtin_specs = builtin_specs(config)
        # Whether the sessions live in this process: their calls never suspend and set
        # no timeout, so a turn may start outside any task (server/ws.py runs it so).
        self.local_store = store.mode == "standalone"

    def get(self, name: str) -> AgentConfig:
        return self.registry.get(name)

    def all(self) -> list[AgentConfig]:
        return self.registry.all()

    async def run(
        self,
        req: TurnRequest,
        *,
        deadline: float,
        interrupt: Interrupt | None = None,
        listener: Listener | None = None,
        prepared: Prepared | None = None,
    ) -> TurnResult:
        """Run one turn to its end. ``listener`` hears the reply as it streams; setting
        ``interrupt.asked`` ends the turn at its next chunk, as a cancelled one.
        ``prepared``: what :meth:`prepare` gave for this very request."""
        agent = self.registry.get(req.agent)
        if not req.messages:
            raise BadRequest("messages must not be empty", code="invalid_request")
        interrupt = interrupt or Interrupt()
        if agent.tools or req.tool_servers or (req.session_id and not self.local_store):
            await in_task()  # their timeouts (asyncio.timeout) need one
        interactive = req.request_class == INTERACTIVE and not req.depth
        if interactive:
            self.admission.check(agent.name)
            self.admission.enter(agent.name)
        ticket = None
        if self.limiter is not None and req.identity is not None:
            # Background turns were admitted when queued: only charged.
            ticket = self.limiter.begin(req.identity, check=interactive)
        try:
            toolset = None
            if (agent.tools or req.tool_servers) and self.tools is not None:
                toolset = await self.tools.for_agent(
                    agent, builtins=self.builtin_specs, extra=req.tool_servers
                )
                deadline = min(deadline, asyncio.get_running_loop().time()
                               + self.tools.limits(agent).max_turn_s)  # fmt: skip
            if req.session_id is None:
                # Admitted already with no listener to tell (most requests): no call.
                if (
                    ticket is not None
                    and not (ticket.ready and listener is None)
                    and not admitted_now(ticket, listener)
                ):
                    await admitted(ticket, listener)
                if toolset is not None:
                    await listed(toolset, listener)
                plan = prepared or self._plan(agent, req, (), toolset, interrupt, listener)
                if listener is None and plan.loop is None:
                    hit = self._l1_hit(plan, interrupt, ticket)
                    if hit is not None:
                        return hit
                return await self._reply(agent, req, plan, None, Timings(), deadline,
                                         interrupt, listener, ticket)  # fmt: skip
            loop = asyncio.get_running_loop()
            timings = Timings()
            started = loop.time()
            store = self.store.for_tenant(req.tenant)
            hold = self.leases.hold(store, req.session_id, agent.history, deadline, interrupt)
            async with hold as held:
                timings.session = loop.time() - started
                if ticket is not None and not admitted_now(ticket, listener):
                    await admitted(ticket, listener)
                if req.may_repeat and (earlier := stored_reply(req.turn_id, held.history)):
                    return await told_again(earlier, agent, req, timings, listener)
                if toolset is not None:
                    await listed(toolset, listener)
                plan = self._plan(agent, req, held.window, toolset, interrupt, listener)
                return await self._reply(agent, req, plan, held, timings, deadline,
                                         interrupt, listener, ticket)  # fmt: skip
        finally:
            if ticket is not None and not ticket.ended:
                ticket.settle(ran=False)  # a turn that ended before its reply settled it
            if interactive:
                self.admission.leave(agent.name)

    def _l1_hit(
        self, plan: _Plan, interrupt: Interrupt, ticket: Ticket | None
    ) -> TurnResult | None:
        """A stateless turn's reply from the L1, as :meth:`_reply` ends it when
        :meth:`_call` replays a cached reply to no listener (most cache hits), without
        their per-chunk machinery; None when the L1 has no fresh reply to replay so (the
        turn then takes the path of any other)."""
        if self.cache is None or plan.key is None or interrupt.asked:
            return None  # no cache, or a turn cut short at once: _call's to do
        cached = self.cache.l1_text(plan.key)
        if cached is None:
            return None
        text = "".join(cached.chunks)
        usage = cached.usage or {}
        ratelimit = NO_HEADERS
        if ticket is not None:
            ticket.settle(usage, "hit-l1")  # a hit is charged no tokens
            ratelimit = ticket.headers
        timings = ReplayTimings()  # replayed at once: no upstream time, no first-token wait
        if self.metrics is not None:
            self.metrics.observe_replay(bool(text))  # _stages_run's, every stage 0
        finish = cached.finish_reason or "stop"
        return TurnResult(text, finish, usage, cached.node or "", plan.request.model, [],
                          timings, "hit-l1", ratelimit=ratelimit)  # fmt: skip

    def prepare(self, req: TurnRequest) -> Prepared | None:
        """The model call of ``req`` planned ahead, for a caller that runs the very same
        request again (the front, for identical bodies): only for a stateless turn of an
        agent without tools, whose plan depends on the request alone; None otherwise, or
        when planning fails (the run then fails the same way, in its own order)."""
        if req.session_id is not None or req.tool_servers or not req.messages:
            return None
        try:
            agent = self.registry.get(req.agent)
            if agent.tools:
                return None
            return self._plan(agent, req, ())
        except AgentdError:
            return None

    def _plan(
        self,
        agent: AgentConfig,
        req: TurnRequest,
        history: Sequence[dict[str, Any]],
        toolset: ToolSet | None = None,
        interrupt: Interrupt | None = None,
        listener: Listener | None = None,
    ) -> _Plan:
        """``history``: the session's window, as a model call sends it (store fields
        dropped, see :mod:`agentd.store.upstream`); its messages go upstream as they are."""
        # The history window may begin with tool results whose call fell outside it: a
        # model refuses a tool message that answers no call, so they stay out too.
        start = 0
        while start < len(history) and history[start].get("role") == "tool":
            start += 1
        check_tool_messages(req.messages, pending_calls(history) if history else None)
        upstream: list[dict[str, Any]] = []
        if agent.system_prompt:
            upstream.append({"role": "system", "content": agent.system_prompt})
        if start < len(history):
            upstream.extend(history[start:] if start else history)
        upstream.extend(req.messages)
        params = {**agent.params, **req.params}
        loop = None
        if toolset is not None and toolset.functions and self.tools is not None:
            # Calls of the client's own tools go back to it, where it can take them.
            client_tools = frozenset(_names(params.get("tools")) if req.tool_calls else ())
            client_tools |= toolset.held  # calls that wait for the client's approval
            params = merge_tools(params, toolset)
            loop = ToolLoop(self.tools, agent, toolset, client_tools, interrupt or Interrupt(),
                            listener, Builtins(self, agent, req))  # fmt: skip
        request = ChatRequest(model=agent.upstream_model, messages=upstream, params=params)
        return _Plan(request, self.backends.get(agent.backend), self._key(agent, req, request),
                     loop)  # fmt: skip

    def _key(self, agent: AgentConfig, req: TurnRequest, request: ChatRequest) -> bytes | None:
        """The model call's cache key (None: its reply is not cached)."""
        if self.cache is None or not cacheable(agent.cache, request.params):
            return None
        return fastpath.cache_key(_cache_scope(agent, req.tenant), request.model,
                                  request.messages, request.params)  # fmt: skip

    def _next_plan(
        self, agent: AgentConfig, req: TurnRequest, plan: _Plan, added: list[dict[str, Any]],
        last: bool,
    ) -> _Plan:  # fmt: skip
        """The loop's next model call: the conversation with the step's messages; the
        request's tool_choice only ever on the first call, ``none`` on the last."""
        params = {k: v for k, v in plan.request.params.items() if k != "tool_choice"}
        if last:
            params["tool_choice"] = "none"
        request = ChatRequest(plan.request.model, [*plan.request.messages, *added], params)
        return _Plan(request, plan.pool, self._key(agent, req, request), plan.loop)

    async def _reply(
        self,
        agent: AgentConfig,
        req: TurnRequest,
        plan: _Plan,
        held: Held | None,
        timings: Timings,
        deadline: float,
        interrupt: Interrupt,
        listener: Listener | None,
        ticket: Ticket | None = None,
    ) -> TurnResult:
        """Get the reply (cached, or from the model through the cache; with the agent's
        tools, every step of its loop), pass it on as it comes, store the turn if it has
        a session, and sum it up."""
        tool_loop = plan.loop
        if tool_loop is None:
            reply = await self._call(agent, req, plan, timings, deadline, interrupt, listener,
                                     ticket)  # fmt: skip
            replies, in_step = [reply], False
        else:
            replies, in_step, plan = await self._steps(agent, req, plan, tool_loop, timings,
                                                       deadline, interrupt, ticket)  # fmt: skip
            reply = replies[-1]
        cancelled = reply.cancelled or (in_step and interrupt.asked)
        if in_step:
            calls = None if cancelled else tool_loop.client_calls(reply.calls)  # type: ignore
        else:
            calls = None if reply.cancelled else reply.calls  # a cut call is no call
        finish = "tool_calls" if calls else "cancelled" if cancelled else reply.finish
        # One model call, no session, no calls: the listener hears the end before the
        # bookkeeping below (unless _call told it at the last chunk).
        alone = held is None and tool_loop is None
        if alone and listener is not None and not (calls or reply.told):
            listener.ended(finish, reply.usage)
        if len(replies) == 1:
            text, usage = "".join(reply.parts), reply.usage
        else:
            text = STEP_SEPARATOR.join(t for r in replies if (t := "".join(r.parts)))
            usage = summed_usage([r.usage for r in replies])
        ratelimit = NO_HEADERS
        if ticket is not None:
            if len(replies) == 1:
                hit = reply.level.startswith("hit")
            else:
                hit = all(r.level.startswith("hit") for r in replies)
            if hit:  # charged no tokens: no estimate to make
                ticket.settle(usage, replies[0].level)
            else:
                prompt_chars = sum(r.prompt_chars for r in replies)
                said_chars = len(text)
                for r in replies:
                    if r.calls:
                        said_chars += sum(len(c["function"]["arguments"]) for c in r.calls)
                ticket.settle(usage, "miss", prompt_chars, said_chars)
            ratelimit = ticket.headers
        if calls and not req.tool_calls:
            raise unrelayed(calls)

        stored: list[dict[str, Any]] = []
        turn_id = ""
        if held is not None and req.store:
            turn_id = req.turn_id or new_turn_id()
            said = messages_to_store(reply, calls, cancelled, in_step, tool_loop)
            if req.metadata:
                said[-1]["metadata"] = req.metadata
            new = [m for m in req.messages if m.get("role") != "system"]
            loop = asyncio.get_running_loop()
            started = loop.time()
            stored = await held.store([{**m, "turn": turn_id} for m in (*new, *said)])
            timings.persist = loop.time() - started
        if self.metrics is not None:
            replied = bool(text or calls)
            self.metrics.observe_turn(_stages_run(timings, held is not None, replied,
                                                  tool_loop is not None))  # fmt: skip
        return TurnResult(text, finish, usage, reply.node, plan.request.model,
                          stored, timings, replies[0].level, turn_id, cancelled,
                          ratelimit, calls, len(replies),
                          tool_loop.runs if tool_loop is not None else [])  # fmt: skip

    async def _steps(
        self,
        agent: AgentConfig,
        req: TurnRequest,
        plan: _Plan,
        tool_loop: ToolLoop,
        timings: Timings,
        deadline: float,
        interrupt: Interrupt,
        ticket: Ticket | None,
    ) -> tuple[list[Reply], bool, _Plan]:
        """The model calls of a turn with the agent's tools, and the tool steps between
        them (:mod:`.loop`): the replies, whether the turn ended with a step's calls (the
        client's, or an interrupt among them), and the last call's plan."""
        listener = tool_loop.listener
        replies: list[Reply] = []
        if req.checkpoint is not None:
            # A job's later attempt: on after the steps an earlier one recorded.
            for recorded in await tool_loop.resume(req.checkpoint):
                replies.append(Reply.made(recorded.said, recorded.usage))
            if replies:
                added = [m for step in tool_loop.steps for m in step.messages()]
                last = len(replies) + 1 >= tool_loop.max_steps
                plan = self._next_plan(agent, req, plan, added, last)
        reply = await self._call(agent, req, plan, timings, deadline, interrupt, listener, ticket)
        replies.append(reply)
        in_step = False
        while tool_loop.ours(reply.calls) and not reply.cancelled:
            if len(replies) >= tool_loop.max_steps:
                # Asked for tools on the call made with tool_choice "none".
                reply.calls, reply.finish = None, "length"
                break
            await tool_loop.run_step("".join(reply.parts), reply.calls, deadline, timings)
            if interrupt.asked or tool_loop.client_calls(reply.calls):
                in_step = True
                break
            if req.checkpoint is not None:
                await tool_loop.record(req.checkpoint, reply.usage)
            # The last call's conversation holds the earlier steps: add this one's.
            added = tool_loop.steps[-1].messages()
            last = len(replies) + 1 >= tool_loop.max_steps
            plan = self._next_plan(agent, req, plan, added, last)
            if isinstance(listener, ClientView):
                listener.next_step()
            reply = await self._call(agent, req, plan, timings, deadline, interrupt, listener,
                                     ticket)  # fmt: skip
            replies.append(reply)
        timings.add_loop(len(replies), tool_loop.runs)
        if self.metrics is not None:
            self.metrics.observe_steps(agent.name, len(replies))
        return replies, in_step, plan

    async def _call(
        self,
        agent: AgentConfig,
        req: TurnRequest,
        plan: _Plan,
        timings: Timings,
        deadline: float,
        interrupt: Interrupt,
        listener: Listener | None,
        ticket: Ticket | None,
    ) -> Reply:
        """One model call (cached, or from the model through the cache), passed on to
        the listener as it comes."""

        def call_model() -> AsyncIterator[Chunk]:
            return plan.pool.stream(
                plan.request,
                session_id=req.session_id,
                deadline=deadline,
                request_class=req.request_class,
            )

        source: CachedReply | AsyncIterator[Any]
        if plan.key is None or self.cache is None:
            source, level = call_model(), "bypass"
        else:
            source, level = await self.cache.get(plan.key, agent.cache, call_model, deadline)
        if listener is not None:
            listener.source(level)
        reply = Reply(level)
        # A stream's last chunk ends it (Chunk): a turn nothing can fail after tells its
        # listener then, before the pool's bookkeeping (Listener.ended).
        early = listener is not None and level == "bypass"
        early = early and req.session_id is None and plan.loop is None
        if ticket is not None and not level.startswith("hit"):
            reply.prompt_chars = sum(text_chars(m) for m in plan.request.messages)
        loop = asyncio.get_running_loop()
        started = first = loop.time()
        # Interrupts are checked between chunks (no task per chunk on this hot loop): a
        # turn asked to stop ends at its next chunk, or at its deadline if nothing comes.
        # A cached reply is replayed with a plain for and a stream relayed with async for:
        # the two bodies match, and sharing them would cost a coroutine per chunk (an L1
        # hit 1.5 us slower, measured).
        if isinstance(source, CachedReply):
            for text in source.chunks:
                if text:
                    if not reply.parts:
                        first = loop.time()
                    reply.parts.append(text)
                    if listener is not None:
                        await listener.delta(text)
                if interrupt.asked:
                    reply.cancel()
                    break
            else:
                reply.end(source.finish_reason, source.usage, source.node)
                if source.tool_calls is not None:
                    await replay_calls(reply, source.tool_calls, listener)
        else:
            async with contextlib.aclosing(source):
                async for item in source:
                    if isinstance(item, Served):  # the end of a stream through the cache
                        reply.end(item.reply.finish_reason, item.reply.usage, item.reply.node)
                        if item.reply.tool_calls is None:
                            continue
                        if reply.relayed:
                            reply.calls = item.reply.tool_calls
                        else:  # a reply found whole when the flight began
                            await replay_calls(reply, item.reply.tool_calls, listener)
                        continue
                    if isinstance(item, list):  # tool call pieces through the cache
                        if not reply.parts and first == started:
                            first = loop.time()
                        reply.relayed = True
                        if listener is not None:
                            await listener.tool_deltas(item)
                        if interrupt.asked:
                            reply.cancel()
                            break
                        continue
                    text = item if isinstance(item, str) else item.text
                    if text:
                        if not reply.parts:
                            first = loop.time()
                        reply.parts.append(text)
                        if listener is not None:
                            await listener.delta(text)
                    if not isinstance(item, str):
                        if item.tool_deltas is not None:
                            if not reply.parts and first == started:
                                first = loop.time()  # a call's first piece is a first token
                            if listener is not None:
                                await listener.tool_deltas(item.tool_deltas)
                        if item.finish_reason is not None or item.usage is not None:
                            reply.end(item.finish_reason, item.usage, item.node)
                        elif item.node:  # a chunk before the last: only its node
                            reply.node = item.node
                        if item.tool_calls is not None:
                            reply.calls = item.tool_calls
                        if early and item.finish_reason and not (reply.calls or interrupt.asked):
                            reply.told = True
                            listener.ended(reply.finish, reply.usage)  # type: ignore[union-attr]
                    if interrupt.asked:
                        reply.cancel()
                        break
        timings.upstream += loop.time() - started
        if not timings.upstream_ttft and (reply.parts or (reply.calls and not reply.cancelled)):
            timings.upstream_ttft = first - started
        return reply


def _cache_scope(agent: AgentConfig, tenant: str) -> str:
    """Whose cached replies a turn may be served: its tenant's own (a cache shared by
    tenants would tell one tenant's prompts to another through its hits), or every
    tenant's when the agent says ``shared_cache``. Tenant and agent names have no ``/``."""
    return agent.name if agent.shared_cache or not tenant else f"{tenant}/{agent.name}"


def _stages_run(
    timings: Timings, session: bool, replied: bool, tools: bool = False
) -> dict[str, float]:
    """The stages a turn went through, for /metrics: a stateless turn has no session or
    persist stage, a reply without text no first token, an agent without tools no tool
    stage."""
    stages = {"upstream": timings.upstream}
    if replied:
        stages["upstream_ttft"] = timings.upstream_ttft
    if tools:
        stages["tools"] = timings.tools
    if session:
        stages["session"] = timings.session
        stages["persist"] = timings.persist
    return stages


def _names(tools: Any) -> list[str]:
    """The function names of a (checked) ``tools`` parameter."""
    return [t["function"]["name"] for t in tools or () if t.get("type") == "function"]
