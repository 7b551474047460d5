"""OpenAI's legacy completion (``text_completion``), whole and streamed, as agentd sends
it: pure functions of plain values, no I/O.

A streamed completion is ``text_completion`` objects whose choices carry pieces of text
(``finish_reason`` null until a choice's last piece), a usage chunk with no choices when
the client asked for ``stream_options.include_usage``, then ``data: [DONE]``; an error
after the stream began is an error body in the stream, as in the chat API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from random import getrandbits
from typing import Any, Protocol

import orjson

from . import sse
from .chat import full_usage

__all__ = ("ChoicePiece", "TextChunks", "completion_id", "text_completion")


class ChoicePiece(Protocol):
    """What a backend says of one choice (see ``agentd.backends.TextChoice``)."""

    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None


def completion_id() -> str:
    """A new legacy completion id: ``cmpl-`` and 24 hex digits."""
    return f"cmpl-{getrandbits(96):024x}"


def _choice(piece: ChoicePiece) -> dict[str, Any]:
    return {
        "index": piece.index,
        "text": piece.text,
        "finish_reason": piece.finish_reason,
        "logprobs": piece.logprobs,
    }


def text_completion(
    cid: str,
    created: int,
    model: str,
    choices: Iterable[ChoicePiece],
    usage: Mapping[str, Any],
) -> dict[str, Any]:
    """The whole ``text_completion`` object (choices in index order)."""
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [_choice(c) for c in sorted(choices, key=lambda c: c.index)],
        "usage": full_usage(usage),
    }


class TextChunks:
    """The SSE frames of one streamed completion, all with the same id and time."""

    __slots__ = ("_head",)

    def __init__(self, cid: str, created: int, model: str) -> None:
        self._head = {"id": cid, "object": "text_completion", "created": created, "model": model}

    def choices(self, pieces: Iterable[ChoicePiece]) -> bytes:
        """A chunk with pieces of choices."""
        return sse.frame(orjson.dumps({**self._head, "choices": [_choice(p) for p in pieces]}))

    def usage(self, usage: Mapping[str, Any]) -> bytes:
        """The usage chunk (``stream_options.include_usage``): no choices."""
        return sse.frame(orjson.dumps({**self._head, "choices": [], "usage": full_usage(usage)}))
