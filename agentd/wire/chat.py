"""OpenAI's chat completion (``chat.completion``), its streamed chunks
(``chat.completion.chunk``) and the model objects of ``/v1/models``, as agentd sends
them: pure functions of plain values (the handler passes the id, the time and what the
turn said), no I/O.

A stream is a role chunk, content chunks (and ``delta.tool_calls`` chunks when the
model calls tools), a finish chunk (with agentd's ``session_id`` and ``seq`` when the
turn was stored), a usage chunk when the client asked for one, then ``data: [DONE]``;
an error after the stream began is an error body in the stream, as OpenAI sends it.
"""

from __future__ import annotations

from collections.abc import Mapping
from random import getrandbits
from typing import Any

import orjson

from ..errors import AgentdError
from . import sse

__all__ = (
    "DONE",
    "Chunks",
    "completion",
    "completion_id",
    "error_frame",
    "full_usage",
    "model_object",
)

# The frame that ends every chat stream.
DONE = sse.frame(b"[DONE]")


def completion_id() -> str:
    """A new completion id: ``chatcmpl-`` and 24 hex digits."""
    # A label, not a secret: the random module (reseeded in every forked worker) gives
    # the same 24 hex digits as secrets.token_hex(12) at half the cost.
    # 96 random bits as 12 bytes in hex: the same 24 digits as formatting the int, faster.
    return "chatcmpl-" + getrandbits(96).to_bytes(12, "big").hex()


def full_usage(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The backend's usage, with the three counts OpenAI always sends (0 when unknown)."""
    counts = dict(raw)
    counts.setdefault("prompt_tokens", 0)
    counts.setdefault("completion_tokens", 0)
    counts.setdefault("total_tokens", counts["prompt_tokens"] + counts["completion_tokens"])
    return counts


def _stored(session_id: str | None, seq: int | None) -> dict[str, Any]:
    # agentd's extension: where the turn was stored, when it was.
    return {} if seq is None else {"session_id": session_id, "seq": seq}


def completion(
    cid: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    usage: Mapping[str, Any],
    session_id: str | None = None,
    seq: int | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished turn; ``seq`` (the stored reply's
    sequence number, None when nothing was stored) adds ``session_id`` and ``seq``. A
    reply with ``tool_calls`` has them in its message, whose content is null when the
    model said nothing else."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["content"] = text or None
        message["tool_calls"] = tool_calls
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason,
            }
        ],
        "usage": full_usage(usage),
        **_stored(session_id, seq),
    }


# A content chunk after its text (see Chunks.content).
_CONTENT_END = b'},"finish_reason":null}]}\n\n'


class Chunks:
    """The SSE frames of one streamed completion, all with the same id and time."""

    __slots__ = ("_content", "_created", "_id", "_model")

    def __init__(self, cid: str, created: int, model: str) -> None:
        self._id, self._created, self._model = cid, created, model
        self._content = b""  # a content chunk's bytes before its text, made at the first

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        doc = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            **extra,
        }
        return sse.frame(orjson.dumps(doc))

    def _delta(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return self._frame([{"index": 0, "delta": delta, "finish_reason": finish}], **extra)

    def role(self, content: str | None = "") -> bytes:
        """The first chunk: the assistant's role and empty content (null when the reply
        begins with tool calls, as OpenAI sends it)."""
        return self._delta({"role": "assistant", "content": content})

    def content(self, text: str) -> bytes:
        """A piece of the reply's text (the most frequent frame: the bytes around the
        text are made once, the same as :meth:`_delta` writes them)."""
        before = self._content
        if not before:
            before = self._content = self._delta({"content": None}).removesuffix(
                b"null" + _CONTENT_END
            )
        return before + orjson.dumps(text) + _CONTENT_END

    def tool_calls(self, pieces: list[dict[str, Any]]) -> bytes:
        """Pieces of the reply's tool calls (``index``; ``id``, ``type`` and
        ``function.name`` on a call's first piece; ``function.arguments`` fragments)."""
        return self._delta({"tool_calls": pieces})

    def progress(self, doc: Mapping[str, Any]) -> bytes:
        """A server-side tool call starting or ending (:mod:`.tool_progress`): an empty
        delta that standard clients skip, and agentd's ``agentd`` field."""
        return self._delta({}, agentd=doc)

    def finish(self, reason: str, session_id: str | None = None, seq: int | None = None) -> bytes:
        """The chunk with the finish reason (and where the turn was stored, as
        :func:`completion` says)."""
        return self._delta({}, reason, **_stored(session_id, seq))

    def usage(self, usage: Mapping[str, Any]) -> bytes:
        """The usage chunk (``stream_options.include_usage``): no choices."""
        return self._frame([], usage=full_usage(usage))


def error_frame(exc: AgentdError) -> bytes:
    """An error after the stream began: its error body as a data frame."""
    return sse.frame(orjson.dumps(exc.to_dict()))


def model_object(name: str, created: int) -> dict[str, Any]:
    """An agent as an OpenAI model object (``GET /v1/models``): the model is the agent,
    ``created`` when it was defined (Unix seconds)."""
    return {"id": name, "object": "model", "created": created, "owned_by": "agentd"}
