"""A backend's pool of nodes: picks a node per call, retries before the first chunk,
keeps each node's breaker and latency estimate, and counts calls in metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol

from ..config import BackendConfig
from ..errors import BadRequest, Overloaded, UpstreamTimeout
from .balance import make_policy
from .nodes import CLOSED, OPEN, STATE_NAMES, Breaker, Node
from .types import (
    ChatRequest,
    Chunk,
    Completion,
    Transport,
    UpstreamAuth,
    is_retryable,
)

if TYPE_CHECKING:
    from ..metrics import BackendMetrics

__all__ = ("MAX_ATTEMPTS", "Pool")

log = logging.getLogger(__name__)

# Nodes one call may try (each at most once) while nothing has reached the caller.
MAX_ATTEMPTS = 3


class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Pool:
    """The nodes of one backend and the policy that spreads calls over them."""

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
        self._client = client

    async def start(self) -> None:
        if self._client is not None:
            await self._client.start()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def complete(
        self, request: ChatRequest, session_id: str | None = None, deadline: float | None = None
    ) -> Completion:
        """The whole reply, by draining :meth:`stream`."""
        parts: list[str] = []
        last: Chunk | None = None
        async for chunk in self.stream(request, session_id=session_id, deadline=deadline):
            if chunk.text:
                parts.append(chunk.text)
            last = chunk
        assert last is not None  # a stream always ends with a finishing chunk
        return Completion("".join(parts), last.finish_reason or "stop", last.usage or {}, last.node)

    async def stream(
        self, request: ChatRequest, session_id: str | None = None, deadline: float | None = None
    ) -> AsyncIterator[Chunk]:
        """Stream a reply from one node chosen by the policy.

        ``deadline`` is a ``loop.time()`` (capped at ``timeout_s`` from now); past it the
        call raises :class:`UpstreamTimeout`. A retryable failure before the first chunk
        is retried on another node; after it, the error reaches the caller, never a
        second answer. Close the iterator (``contextlib.aclosing``) if you stop early.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit = now + self.config.timeout_s
        if deadline is None or deadline > limit:
            deadline = limit
        tried: list[Node] = []
        last_error: Exception | None = None
        while True:
            if now >= deadline:
                raise UpstreamTimeout(f"backend {self.name}: the deadline passed")
            node = self._pick(session_id, tried, now)
            if node is None:
                if last_error is not None:
                    raise last_error
                raise self._overloaded(now)
            tried.append(node)
            before = node.breaker.state
            probe = node.breaker.acquire(now)
            if node.breaker.state != before:
                self._breaker_moved(node, before)
            node.inflight += 1
            started = now
            first = False
            outcome = "error"
            chunks = node.transport.stream(request, deadline)
            try:
                async for chunk in chunks:
                    if not first:
                        first = True
                        at = loop.time()
                        node.observe(at - started, at)
                        if node.metrics is not None:
                            node.metrics.first_token.observe(at - started)
                    yield chunk
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
                if first or not is_retryable(exc) or len(tried) >= MAX_ATTEMPTS:
                    raise
                log.warning(
                    "backend %s: node %s failed (%s); trying another", self.name, node.name, exc
                )
                last_error = exc
            finally:
                node.inflight -= 1
                if outcome != "ok":
                    await chunks.aclose()
                self._settle(node, probe, outcome, first, started, loop.time())
            now = loop.time()

    def status(self) -> list[dict[str, object]]:
        """Each node's breaker, load and latency estimate, for operators."""
        now = asyncio.get_running_loop().time()
        return [node.status(now) for node in self.nodes]

    # -- internals ----------------------------------------------------------------------

    def _pick(self, session_id: str | None, tried: list[Node], now: float) -> Node | None:
        """A node for the next attempt: a node due for its probe first (so a recovered
        node comes back at once), else the policy's choice among healthy untried nodes."""
        single = self._single
        if single is not None:
            return None if tried or not single.breaker.ready(now) else single
        candidates = []
        for node in self.nodes:
            if node.breaker.ready(now) and node not in tried:
                if node.breaker.state != CLOSED:
                    return node
                candidates.append(node)
        if not candidates:
            return None
        return self._policy.pick(candidates, session_id, now)

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
