"""A backend's pool of nodes: picks a node per call, retries before the first chunk,
keeps each node's breaker and latency estimate, and counts calls in metrics.

Chat streams, embeddings and legacy completions take the same path (:meth:`Pool._relay`);
a reply that comes whole is a stream of one item, so "before the first chunk" means
"before the whole reply" for it.

Every call has a request class: ``"interactive"`` (people waiting) or any other name
(background jobs, agent-declared classes). With ``max_inflight`` set, a node takes at
most that many calls of this worker at once, and non-interactive calls at most their
``background_share`` of it; a call that finds no node with room waits in line
(interactive calls first) until a call ends or its deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from ..config import BackendConfig
from ..errors import BadRequest, Overloaded, UpstreamError, UpstreamTimeout
from .balance import Policy, make_policy
from .capacity import BACKGROUND, INTERACTIVE, Waiter, WaitLine, background_limit
from .nodes import CLOSED, OPEN, STATE_NAMES, Breaker, Node
from .types import (
    ChatRequest,
    Chunk,
    Completion,
    EmbeddingRequest,
    Embeddings,
    TextChunk,
    TextRequest,
    Transport,
    UpstreamAuth,
    is_retryable,
)

if TYPE_CHECKING:
    from ..metrics import BackendMetrics

__all__ = ("BACKGROUND", "INTERACTIVE", "MAX_ATTEMPTS", "Pool", "background_limit")

log = logging.getLogger(__name__)

T = TypeVar("T")

# Nodes one call may try (each at most once) while nothing has reached the caller.
MAX_ATTEMPTS = 3


class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Pool:
    """The nodes of one backend and the policies that spread calls over them."""

    def __init__(
        self,
        config: BackendConfig,
        transports: Sequence[Transport],
        metrics: BackendMetrics | None = None,
        *,
        client: Lifecycle | None = None,
    ) -> None:
        if not transports:
            raise ValueError(f"backend {config.name!r} has no nodes")
        self.name = config.name
        self.config = config
        self.nodes = tuple(
            Node(
                transport,
                Breaker(config.breaker_failures, config.breaker_cooldown_s),
                metrics.node(config.name, transport.name) if metrics is not None else None,
            )
            for transport in transports
        )
        self._single = self.nodes[0] if len(self.nodes) == 1 else None
        self._policy = make_policy(config.policy, self.nodes)
        # A class of its own policy gets its own instance: round-robin turns and the like
        # are counted per class.
        self._policies = {
            name: make_policy(policy, self.nodes) for name, policy in config.policies.items()
        }
        self._limit = config.max_inflight  # 0: no admission control at all
        self._background_limit = background_limit(config.max_inflight, config.background_share)
        self._line = WaitLine()
        self._client = client

    async def start(self) -> None:
        if self._client is not None:
            await self._client.start()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def complete(
        self,
        request: ChatRequest,
        session_id: str | None = None,
        deadline: float | None = None,
        *,
        request_class: str = INTERACTIVE,
    ) -> Completion:
        """The whole reply, by draining :meth:`stream` (its tool calls whole, from the
        last chunk)."""
        parts: list[str] = []
        last: Chunk | None = None
        chunks = self.stream(
            request, session_id=session_id, deadline=deadline, request_class=request_class
        )
        async for chunk in chunks:
            if chunk.text:
                parts.append(chunk.text)
            last = chunk
        assert last is not None  # a stream always ends with a finishing chunk
        return Completion("".join(parts), last.finish_reason or "stop", last.usage or {},
                          last.node, last.tool_calls)  # fmt: skip

    def stream(
        self,
        request: ChatRequest,
        session_id: str | None = None,
        deadline: float | None = None,
        *,
        request_class: str = INTERACTIVE,
    ) -> AsyncIterator[Chunk]:
        """Stream a reply from one node chosen by the policy of ``request_class``.

        ``deadline`` is a ``loop.time()`` (capped at ``timeout_s`` from now); past it the
        call raises :class:`UpstreamTimeout`, also while it waits for a node with room.
        A retryable failure before the first chunk is retried on another node; after it,
        the error reaches the caller, never a second answer. Close the iterator
        (``contextlib.aclosing``) if you stop early: that frees its place on the node.
        """
        return self._relay(
            lambda transport, until: transport.stream(request, until),
            session_id,
            deadline,
            request_class,
        )

    async def embed(
        self,
        request: EmbeddingRequest,
        deadline: float | None = None,
        *,
        request_class: str = INTERACTIVE,
    ) -> Embeddings:
        """The embeddings of ``request.input`` (400 ``unsupported_endpoint`` when this
        backend does not serve embeddings). Nothing reaches the caller before the whole
        reply, so any retryable failure is retried on another node."""
        self._serves("embeddings")
        calls = self._relay(
            lambda transport, until: transport.embed(request, until),
            None,
            deadline,
            request_class,
        )
        reply: Embeddings | None = None
        async with contextlib.aclosing(calls):
            async for item in calls:
                reply = item  # drained to its end: the call ends "ok", not cancelled
        if reply is None:
            raise UpstreamError(f"backend {self.name}: no embeddings in the reply")
        return reply

    def complete_text(
        self,
        request: TextRequest,
        deadline: float | None = None,
        *,
        request_class: str = INTERACTIVE,
    ) -> AsyncIterator[TextChunk]:
        """A legacy completion (streamed, or one chunk holding the whole reply), retried on
        another node while nothing has reached the caller, as :meth:`stream`."""
        self._serves("completions")
        return self._relay(
            lambda transport, until: transport.complete_text(request, until),
            None,
            deadline,
            request_class,
        )

    async def _relay(
        self,
        call: Callable[[Transport, float], AsyncIterator[T]],
        session_id: str | None,
        deadline: float | None,
        request_class: str,
    ) -> AsyncIterator[T]:
        """Run ``call(transport, deadline)`` on a node chosen by the policy of
        ``request_class`` and pass on what it yields (see :meth:`stream`): the one path of
        every model call, whatever its endpoint."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit = now + self.config.timeout_s
        if deadline is None or deadline > limit:
            deadline = limit
        background = request_class != INTERACTIVE
        policy = self._policies.get(request_class, self._policy)
        tried: list[Node] = []
        last_error: Exception | None = None
        while True:
            if now >= deadline:
                raise UpstreamTimeout(f"backend {self.name}: the deadline passed")
            node, full = self._pick(session_id, tried, background, policy, now)
            if node is not None:
                probe = self._take(node, background, now)
            elif full:
                taken = await self._wait(session_id, tried, background, policy, deadline)
                now = loop.time()
                if taken is None:
                    continue  # the healthy nodes went away meanwhile: decide again
                node, probe = taken
            else:
                if last_error is not None:
                    raise last_error
                raise self._overloaded(now)
            tried.append(node)
            started = now
            first = False
            outcome = "error"
            items = call(node.transport, deadline)
            try:
                async for item in items:
                    if not first:
                        first = True
                        at = loop.time()
                        node.observe(at - started, at)
                        if node.metrics is not None:
                            node.metrics.first_token.observe(at - started)
                    yield item
                outcome = "ok"
                return
            except UpstreamTimeout:
                outcome = "timeout"
                raise
            except (BadRequest, UpstreamAuth):  # the request or our config: not the node
                outcome = "rejected"
                raise
            except (GeneratorExit, asyncio.CancelledError):
                outcome = "cancelled"
                raise
            except Exception as exc:
                if first or not is_retryable(exc):
                    raise
                if len(tried) >= MAX_ATTEMPTS:
                    log.warning(
                        "backend %s: node %s failed (%s); giving up after %d nodes",
                        self.name, node.name, exc, len(tried),
                    )  # fmt: skip
                    raise
                if not self._another(tried, loop.time()):
                    log.warning(
                        "backend %s: node %s failed (%s); no other node to try",
                        self.name, node.name, exc,
                    )  # fmt: skip
                    raise
                log.warning(
                    "backend %s: node %s failed (%s); trying another", self.name, node.name, exc
                )
                last_error = exc
            finally:
                # Bookkeeping first, with no await before it: a cancellation arriving
                # while the transport closes must not leave the place or a probe taken.
                self._release(node, background)
                self._settle(node, probe, outcome, first, started, loop.time())
                self._serve_waiting()
                if outcome != "ok":
                    await items.aclose()
            now = loop.time()

    def status(self) -> list[dict[str, object]]:
        """Each node's breaker, load and latency estimate, for operators."""
        now = asyncio.get_running_loop().time()
        return [node.status(now) for node in self.nodes]

    def waiting(self) -> dict[str, int]:
        """Calls waiting for a node with room (only with ``max_inflight``), by kind."""
        return self._line.counts()

    # -- internals ----------------------------------------------------------------------

    def _pick(
        self,
        session_id: str | None,
        tried: list[Node],
        background: bool,
        policy: Policy,
        now: float,
    ) -> tuple[Node | None, bool]:
        """A node for the next attempt: a node due for its probe first (so a recovered
        node comes back at once), else the policy's choice among healthy untried nodes
        with room for the call. ``(None, True)``: such nodes exist but all are full."""
        limit = self._limit
        single = self._single
        if single is not None:
            if tried or not single.breaker.ready(now):
                return None, False
            if limit and not self._has_room(single, background):
                return None, True
            return single, False
        candidates = []
        full = False
        for node in self.nodes:
            if node in tried or not node.breaker.ready(now):
                continue
            if limit and not self._has_room(node, background):
                full = True
                continue
            if node.breaker.state != CLOSED:
                return node, False
            candidates.append(node)
        if not candidates:
            return None, full
        return policy.pick(candidates, session_id, now), False

    def _another(self, tried: list[Node], now: float) -> bool:
        """Whether a node not tried yet may take a call now or once it has room (its
        breaker lets calls or a probe through)."""
        return any(node not in tried and node.breaker.ready(now) for node in self.nodes)

    def _serves(self, endpoint: str) -> None:
        """Refuse a call to an endpoint this backend's nodes do not have (``endpoints``)."""
        if endpoint not in self.config.endpoints:
            raise BadRequest(
                f"backend {self.name!r} does not serve /v1/{endpoint} (its endpoints: "
                f"{', '.join(self.config.endpoints) or 'chat only'})",
                code="unsupported_endpoint",
            )

    def _has_room(self, node: Node, background: bool) -> bool:
        if node.inflight >= self._limit:
            return False
        return not background or node.background < self._background_limit

    def _take(self, node: Node, background: bool, now: float) -> bool:
        """Count a call on ``node``; True if it is the breaker's probe."""
        before = node.breaker.state
        probe = node.breaker.acquire(now)
        if node.breaker.state != before:
            self._breaker_moved(node, before)
        node.inflight += 1
        if background:
            node.background += 1
        return probe

    def _release(self, node: Node, background: bool) -> None:
        node.inflight -= 1
        if background:
            node.background -= 1

    async def _wait(
        self,
        session_id: str | None,
        tried: list[Node],
        background: bool,
        policy: Policy,
        deadline: float,
    ) -> tuple[Node, bool] | None:
        """Wait in line until :meth:`_serve_waiting` hands this call a node (taken for
        it), or ``None`` if no healthy node is left; :class:`UpstreamTimeout` at the
        deadline. Cancelled, it leaves its place in line, or gives back the node."""
        loop = asyncio.get_running_loop()
        waiter = Waiter(loop.create_future(), session_id, tried, background, policy)
        future = waiter.future
        self._line.join(waiter)
        try:
            while not future.done():
                now = loop.time()
                if now >= deadline:
                    break
                # Room appears when a call ends (which serves the line) or when an open
                # breaker's cool-down ends (which nothing signals: look again then).
                wake = min(deadline, self._next_reopen(now))
                await asyncio.wait((future,), timeout=wake - now)
                if not future.done():
                    self._serve_waiting()
        except BaseException:
            self._forget(waiter)
            raise
        if future.done() and loop.time() < deadline:
            return future.result()
        self._forget(waiter)
        raise UpstreamTimeout(
            f"backend {self.name}: the deadline passed while every node was full "
            f"(max_inflight {self._limit})"
        )

    def _forget(self, waiter: Waiter) -> None:
        """Take a call that stops waiting out of line, or give back what it was handed."""
        future = waiter.future
        if not future.done():
            future.cancel()
            self._line.leave(waiter)
            return
        taken = future.result()
        if taken is not None:
            node, probe = taken
            self._release(node, waiter.background)
            node.breaker.released(probe)
            self._serve_waiting()

    def _serve_waiting(self) -> None:
        """Hand nodes with room to waiting calls: interactive ones first, each line in
        order (a waiter may skip ahead only of one that already tried the free node)."""
        if not self._line:
            return
        now = asyncio.get_running_loop().time()
        self._line.serve(
            lambda w: self._pick(w.session_id, w.tried, w.background, w.policy, now),
            lambda node, background: self._take(node, background, now),
        )

    def _next_reopen(self, now: float) -> float:
        """When the next open breaker lets a probe through (``inf`` if none will)."""
        due = math.inf
        for node in self.nodes:
            breaker = node.breaker
            if breaker.state == OPEN and now < breaker.reopen_at < due:
                due = breaker.reopen_at
        return due

    def _settle(
        self, node: Node, probe: bool, outcome: str, first: bool, started: float, now: float
    ) -> None:
        """Tell the breaker and the metrics how a call ended.

        Errors, and timeouts before the first chunk, are the node's failures; a rejected
        request proves the node alive; a cancelled call or a timeout mid-stream (the
        caller's deadline, not the node's health) says nothing.
        """
        breaker = node.breaker
        before = breaker.state
        if outcome in ("ok", "rejected"):
            breaker.succeeded(probe)
        elif outcome == "error" or (outcome == "timeout" and not first):
            breaker.failed(probe, now)
            node.penalize(now)
        else:
            breaker.released(probe)
        if breaker.state != before:
            self._breaker_moved(node, before)
        if node.metrics is not None:
            node.metrics.call(outcome, now - started)

    def _breaker_moved(self, node: Node, before: int) -> None:
        state = node.breaker.state
        if state == OPEN:
            log.warning(
                "backend %s: node %s breaker open for %.1fs",
                self.name,
                node.name,
                node.breaker.cooldown,
            )
        elif state == CLOSED or before == OPEN:
            log.info("backend %s: node %s breaker %s", self.name, node.name, STATE_NAMES[state])
        if node.metrics is not None:
            node.metrics.breaker.set(state)

    def _overloaded(self, now: float) -> Overloaded:
        wait = min(node.breaker.wait(now) for node in self.nodes)
        return Overloaded(
            f"backend {self.name!r} has no healthy node; retry later",
            code="no_healthy_backend",
            retry_after=max(wait, 0.001),
        )
