"""Model backends: the protocols (OpenAI-compatible, echo) and the pools that spread calls
over their nodes.

    backends = Backends(config.backends, metrics=BackendMetrics(app_metrics))
    await backends.start()
    async for chunk in backends.get("echo").stream(request, session_id=sid, deadline=d):
        ...
    # A job's model call uses only the capacity interactive calls leave it.
    pool = backends.get(agent.backend)
    chunks = pool.stream(request, deadline=d, request_class=agent.background_class)
    # The pass-through endpoints, on the same nodes, breakers and limits.
    vectors = (await pool.embed(EmbeddingRequest("text-embed", ["a", "b"]), d)).vectors
    async for piece in pool.complete_text(TextRequest("instruct", "Once", stream=True), d):
        ...
    await backends.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from ..config import BackendConfig
from ..errors import NotFound
from .echo_endpoints import EchoEndpoints
from .openai_endpoints import OpenAIEndpointsClient
from .pool import BACKGROUND, INTERACTIVE, Pool
from .types import (
    ChatRequest,
    Chunk,
    Completion,
    EmbeddingRequest,
    Embeddings,
    TextChoice,
    TextChunk,
    TextRequest,
    ToolCall,
    ToolCallBuffer,
    Transport,
    UpstreamAuth,
    UpstreamRejected,
    is_retryable,
    whole_deltas,
)

if TYPE_CHECKING:
    from ..metrics import BackendMetrics

__all__ = (
    "BACKGROUND",
    "INTERACTIVE",
    "Backends",
    "ChatRequest",
    "Chunk",
    "Completion",
    "EmbeddingRequest",
    "Embeddings",
    "Pool",
    "TextChoice",
    "TextChunk",
    "TextRequest",
    "ToolCall",
    "ToolCallBuffer",
    "Transport",
    "UpstreamAuth",
    "UpstreamRejected",
    "build_pool",
    "is_retryable",
    "whole_deltas",
)


def build_pool(
    config: BackendConfig,
    metrics: BackendMetrics | None = None,
    environ: Mapping[str, str] | None = None,
) -> Pool:
    """The pool for one ``[[backends]]`` entry (not started yet)."""
    if config.type == "echo":
        return Pool(config, [EchoEndpoints(config)], metrics)
    if config.type == "openai":
        client = OpenAIEndpointsClient(config, environ)
        return Pool(config, client.nodes, metrics, client=client)
    raise ValueError(f"backend {config.name!r}: unknown type {config.type!r}")


class Backends:
    """Every configured backend's pool, by name; HTTP sessions live between start and close.

    ``environ`` is where API keys are read (default ``os.environ``).
    """

    def __init__(
        self,
        configs: Sequence[BackendConfig],
        metrics: BackendMetrics | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._pools = {config.name: build_pool(config, metrics, environ) for config in configs}
        self._metrics = metrics

    def report_load(self) -> None:
        """Publish each node's calls in flight and each pool's waiting calls, by kind
        (called when /metrics is scraped)."""
        m = self._metrics
        if m is None:
            return
        for pool in self._pools.values():
            for node in pool.nodes:
                interactive = node.inflight - node.background
                m.inflight.labels(pool.name, node.name, INTERACTIVE).set(interactive)
                m.inflight.labels(pool.name, node.name, BACKGROUND).set(node.background)
            for kind, count in pool.waiting().items():
                m.waiting.labels(pool.name, kind).set(count)

    async def start(self) -> None:
        for pool in self._pools.values():
            await pool.start()

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self._pools.values()))

    async def __aenter__(self) -> Backends:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def get(self, name: str) -> Pool:
        """The pool named ``name``; :class:`NotFound` if there is none."""
        pool = self._pools.get(name)
        if pool is None:
            raise NotFound(f"no backend named {name!r}", code="backend_not_found")
        return pool

    def __contains__(self, name: object) -> bool:
        return name in self._pools

    def __iter__(self) -> Iterator[Pool]:
        return iter(self._pools.values())

    def __len__(self) -> int:
        return len(self._pools)
