"""The built-in ``echo`` model: replies with the last user message, word by word.

It is the out-of-the-box default and the model of load tests, so its path is cheap: one
regex split in C, no sleeping and no await at all when ``latency_ms`` and
``tokens_per_s`` are 0.

Usage accounting: ``prompt_tokens`` is the characters of all messages' text / 4
(rounded up), ``completion_tokens`` the number of chunks streamed (about one per word).

A token of the echo is one of those chunks (a word with the whitespace around it): with
``max_tokens`` or ``max_completion_tokens`` (the Responses API's ``max_output_tokens``
arrives as ``max_tokens``) it stops after that many, with ``finish_reason`` ``length``,
so limits can be tested with no model.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..config import BackendConfig
from ..errors import UpstreamTimeout
from .types import (
    ChatRequest,
    Chunk,
    estimate_tokens,
    last_user_text,
    message_chars,
    usage_dict,
)

__all__ = ("ECHO_NODE", "EchoNode", "output_limit", "split_words")

ECHO_NODE = "echo"

# A word with the whitespace around it: the pieces concatenate back to the input
# exactly (leading whitespace rides on the first word).
_WORD = re.compile(r"\s*\S+\s*")


def split_words(text: str) -> list[str]:
    """``text`` in pieces of about one word whose concatenation is exactly ``text``."""
    parts = _WORD.findall(text)
    if not parts and text:
        return [text]  # only whitespace
    return parts


def output_limit(params: Mapping[str, Any]) -> int | None:
    """The most tokens the reply may have: the smaller of ``max_tokens`` and
    ``max_completion_tokens`` when either is set (never below 0), else None."""
    limits = [
        value
        for value in (params.get("max_tokens"), params.get("max_completion_tokens"))
        if isinstance(value, int) and not isinstance(value, bool)
    ]
    return max(min(limits), 0) if limits else None


class EchoNode:
    """The single virtual node of an ``echo`` backend."""

    name = ECHO_NODE

    def __init__(self, config: BackendConfig) -> None:
        self.latency = config.latency_ms / 1000.0
        self.interval = 1.0 / config.tokens_per_s if config.tokens_per_s > 0 else 0.0

    async def stream(self, request: ChatRequest, deadline: float) -> AsyncIterator[Chunk]:
        """Stream the echo; paced by absolute times, so slow consumers do not slow it down
        further, and sleeping past ``deadline`` raises :class:`UpstreamTimeout` instead."""
        parts = split_words(last_user_text(request.messages))
        finish = "stop"
        limit = output_limit(request.params) if request.params else None
        if limit is not None and len(parts) > limit:
            parts, finish = parts[:limit], "length"
        prompt = estimate_tokens(message_chars(request.messages))
        usage = usage_dict(prompt, len(parts))
        name = ECHO_NODE
        if not self.latency and not self.interval:
            # The hot path: everything at once, never suspending.
            last = len(parts) - 1
            for i in range(last):
                yield Chunk(parts[i], None, None, name)
            yield Chunk(parts[last] if parts else "", finish, usage, name)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + self.latency
        last = len(parts) - 1
        for i in range(max(last, 0) + 1):
            now = loop.time()
            if due > now:
                if due > deadline:
                    await asyncio.sleep(max(deadline - now, 0.0))
                    raise UpstreamTimeout("echo: the deadline passed before the reply ended")
                await asyncio.sleep(due - now)
            due += self.interval
            if i < last:
                yield Chunk(parts[i], None, None, name)
            else:
                yield Chunk(parts[last] if parts else "", finish, usage, name)
