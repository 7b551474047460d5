"""The ``echo`` model's pass-through endpoints, so load tests of ``/v1/embeddings`` and
``/v1/completions`` need no model.

- Embeddings: each input item gets a vector read from SHAKE-256 of its text (or of its
  token ids), as little-endian int16 values scaled to unit length: the same item gives
  the same vector in every process, different items unrelated ones. ``dimensions``
  (default :data:`ECHO_DIMENSIONS`) sets its length.
- Completions: each prompt is echoed back, word by word when streamed; ``n`` copies per
  prompt, cut to ``max_tokens`` words (``finish_reason: "length"``) when it is given.
  A prompt of token ids is echoed as the ids written out. Other fields are accepted and
  have no effect.

Usage: ``prompt_tokens`` is the prompt's characters / 4 (a token list counts its
length), ``completion_tokens`` the words sent, as the chat echo counts them.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
from collections.abc import AsyncIterator

from ..errors import BadRequest, UpstreamTimeout
from .echo import EchoNode, split_words
from .types import (
    EmbeddingRequest,
    Embeddings,
    TextChoice,
    TextChunk,
    TextRequest,
    estimate_tokens,
    input_items,
    usage_dict,
)

__all__ = ("ECHO_DIMENSIONS", "MAX_ECHO_DIMENSIONS", "EchoEndpoints", "echo_vector")

ECHO_DIMENSIONS = 256
MAX_ECHO_DIMENSIONS = 8192


def _item_bytes(item: str | list[int]) -> bytes:
    if isinstance(item, str):
        return b"s:" + item.encode()
    return b"t:" + ",".join(map(str, item)).encode()


def echo_vector(item: str | list[int], dimensions: int = ECHO_DIMENSIONS) -> list[float]:
    """The echo embedding of one input item: ``dimensions`` floats of unit length."""
    raw = hashlib.shake_256(_item_bytes(item)).digest(2 * dimensions)
    values = struct.unpack(f"<{dimensions}h", raw)
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _prompt_tokens(items: list[str | list[int]]) -> int:
    return sum(estimate_tokens(len(i)) if isinstance(i, str) else len(i) for i in items)


async def _wait(seconds: float, deadline: float) -> None:
    """Sleep ``seconds``, or raise :class:`UpstreamTimeout` at ``deadline`` if sooner."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    if now + seconds > deadline:
        await asyncio.sleep(max(deadline - now, 0.0))
        raise UpstreamTimeout("echo: the deadline passed before the reply ended")
    await asyncio.sleep(seconds)


async def embed(
    request: EmbeddingRequest, deadline: float, latency: float, node: str
) -> AsyncIterator[Embeddings]:
    """The echo embeddings of every input item, after ``latency`` seconds."""
    dimensions = request.params.get("dimensions") or ECHO_DIMENSIONS
    if dimensions > MAX_ECHO_DIMENSIONS:
        raise BadRequest(
            f"dimensions must be at most {MAX_ECHO_DIMENSIONS} for the echo model",
            code="invalid_value",
            detail={"param": "dimensions"},
        )
    if latency:
        await _wait(latency, deadline)
    items = input_items(request.input)
    vectors: list[list[float] | str] = [echo_vector(item, dimensions) for item in items]
    tokens = _prompt_tokens(items)
    yield Embeddings(vectors, {"prompt_tokens": tokens, "total_tokens": tokens}, node)


def _words(item: str | list[int]) -> list[str]:
    return split_words(item if isinstance(item, str) else " ".join(map(str, item)))


async def complete_text(
    request: TextRequest, deadline: float, latency: float, interval: float, node: str
) -> AsyncIterator[TextChunk]:
    """Echo each prompt as ``n`` choices: whole, or word by word paced like the chat
    echo (``latency`` to the first word, ``interval`` between words)."""
    items = input_items(request.prompt)
    n = request.params.get("n") or 1
    limit = request.params.get("max_tokens")
    choices: list[tuple[int, list[str], str]] = []
    for i, item in enumerate(items):
        words = _words(item)
        finish = "stop"
        if isinstance(limit, int) and limit < len(words):
            words, finish = words[:limit], "length"
        choices.extend((i * n + j, words, finish) for j in range(n))
    sent = sum(len(words) for _, words, _ in choices)
    usage = usage_dict(_prompt_tokens(items), sent)
    if not request.stream:
        if latency:
            await _wait(latency, deadline)
        whole = [TextChoice(index, "".join(words), finish) for index, words, finish in choices]
        yield TextChunk(whole, usage, node)
        return
    pause = latency
    for c, (index, words, finish) in enumerate(choices):
        last = len(words) - 1
        for w in range(max(last, 0) + 1):
            if pause:
                await _wait(pause, deadline)
            pause = interval
            text = words[w] if words else ""
            done = finish if w == max(last, 0) else None
            end = done is not None and c == len(choices) - 1
            yield TextChunk([TextChoice(index, text, done)], usage if end else None, node)


class EchoEndpoints(EchoNode):
    """The echo node with its embeddings and completions (the chat echo is its base)."""

    def embed(self, request: EmbeddingRequest, deadline: float) -> AsyncIterator[Embeddings]:
        return embed(request, deadline, self.latency, self.name)

    def complete_text(self, request: TextRequest, deadline: float) -> AsyncIterator[TextChunk]:
        return complete_text(request, deadline, self.latency, self.interval, self.name)
