"""What flows through a backend: the request, the streamed chunks, the drained result,
the transport interface each node implements, and the upstream error families."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import UpstreamAuth, UpstreamError, UpstreamRejected

__all__ = (
    "ChatRequest",
    "Chunk",
    "Completion",
    "Transport",
    "UpstreamAuth",
    "UpstreamRejected",
    "estimate_tokens",
    "is_retryable",
    "last_user_text",
    "message_chars",
    "usage_dict",
)

Message = dict[str, Any]


@dataclass(slots=True)
class ChatRequest:
    """One model call: the upstream model name, the messages (OpenAI shape) and extra
    parameters (``temperature``, ``max_tokens``...) passed through as given."""

    model: str
    messages: Sequence[Message]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Chunk:
    """A piece of a streamed reply, from ``node``.

    Every stream ends with exactly one chunk whose ``finish_reason`` is set; that last
    chunk also carries ``usage`` and may carry text. Earlier chunks carry text only.
    """

    text: str
    finish_reason: str | None
    usage: dict[str, int] | None
    node: str


@dataclass(slots=True)
class Completion:
    """A whole reply: what :meth:`Pool.complete` returns after draining the stream."""

    text: str
    finish_reason: str
    usage: dict[str, int]
    node: str


class Transport(Protocol):
    """One model node. ``stream`` must respect ``deadline`` (``loop.time()`` based) and
    raise :class:`UpstreamTimeout` past it; it raises agentd errors only."""

    name: str

    def stream(self, request: ChatRequest, deadline: float) -> AsyncIterator[Chunk]: ...


def is_retryable(exc: BaseException) -> bool:
    """Whether another node may succeed where this one failed (5xx, 429, connection)."""
    return isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamAuth)


# -- usage accounting -----------------------------------------------------------------


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
        return total
    return 0


def message_chars(messages: Sequence[Message]) -> int:
    """Characters of text in all messages (string contents and text parts)."""
    total = 0
    for message in messages:
        total += _content_chars(message.get("content"))
    return total


def estimate_tokens(chars: int) -> int:
    """The usual rough rule for English text: a token is about four characters."""
    return (chars + 3) // 4


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """Usage in OpenAI's shape."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def last_user_text(messages: Sequence[Message]) -> str:
    """The content of the last user message; text parts joined; ``""`` if there is none."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(
                part["text"]
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        return ""
    return ""
