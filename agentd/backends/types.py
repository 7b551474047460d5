"""What flows through a backend: the request, the streamed chunks, the drained result,
the transport interface each node implements, and the upstream error families."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import UpstreamAuth, UpstreamError, UpstreamRejected

__all__ = (
    "ChatRequest",
    "Chunk",
    "Completion",
    "EmbeddingRequest",
    "Embeddings",
    "TextChoice",
    "TextChunk",
    "TextRequest",
    "ToolCall",
    "ToolCallBuffer",
    "Transport",
    "UpstreamAuth",
    "UpstreamRejected",
    "estimate_tokens",
    "input_items",
    "is_retryable",
    "last_user_text",
    "message_chars",
    "usage_dict",
    "whole_deltas",
)

Message = dict[str, Any]
# A whole tool call in OpenAI's shape: {"id", "type": "function", "function": {"name",
# "arguments"}}; a piece of one as it streams: {"index", "id"?, "type"?, "function":
# {"name"?, "arguments"?}} (the first piece of a call has its id, type and name).
ToolCall = dict[str, Any]


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
    chunk also carries ``usage`` and may carry text. Earlier chunks carry text, or pieces
    of tool calls (``tool_deltas``, as OpenAI streams them) as the model writes them.
    The last chunk also holds the reply's whole ``tool_calls`` (None: it made none), so a
    caller that does not stream needs no reassembly.
    """

    text: str
    finish_reason: str | None
    usage: dict[str, int] | None
    node: str
    tool_deltas: list[ToolCall] | None = None
    tool_calls: list[ToolCall] | None = None


@dataclass(slots=True)
class Completion:
    """A whole reply: what :meth:`Pool.complete` returns after draining the stream."""

    text: str
    finish_reason: str
    usage: dict[str, int]
    node: str
    tool_calls: list[ToolCall] | None = None


# -- tool calls -----------------------------------------------------------------------


class ToolCallBuffer:
    """Reassembles streamed pieces of tool calls into whole calls.

    Pieces are matched to calls by ``index`` (renumbered densely in order of first
    appearance, whatever numbers the upstream used) unless they bring another call's
    ``id`` (some servers number every call 0); from servers that send no index, by
    ``id``, else to the latest call. :meth:`add` returns each piece normalized
    (dense index, the call's type on its first piece, no nulls), ready to pass on.
    """

    __slots__ = ("_by_key", "_calls")

    def __init__(self) -> None:
        self._calls: list[ToolCall] = []
        self._by_key: dict[Any, int] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, piece: Any) -> ToolCall:
        """Take one upstream piece; the piece to pass on. A piece that is not an object
        is a malformed reply (TypeError, which the node reports as ``upstream_protocol``)."""
        if not isinstance(piece, dict):
            raise TypeError("a tool call piece must be an object")
        index, call_id = piece.get("index"), piece.get("id")
        key: Any = ("i", index) if isinstance(index, int) else ("id", call_id)
        at = self._by_key.get(key)
        if at is None and key[1] is None and self._calls:
            at = len(self._calls) - 1  # neither index nor id: it continues the latest call
        elif at is not None and call_id and call_id != self._calls[at]["id"]:
            # Another id under a known index (servers that number every call 0): the call
            # of that id, or a new one, which the index's next pieces then continue.
            at = self._by_key.get(("id", call_id))
            if at is not None:
                self._by_key[key] = at
        function = piece.get("function") or {}
        if not isinstance(function, dict):
            raise TypeError("a tool call's function must be an object")
        name, fragment = function.get("name"), function.get("arguments")
        out: ToolCall
        if at is None:
            at = len(self._calls)
            self._by_key[key] = at
            # A call needs an id a tool message can answer: an upstream that sent none
            # gets one of ours.
            if not isinstance(call_id, str) or not call_id:
                call_id = "call_" + secrets.token_hex(12)
            self._by_key.setdefault(("id", call_id), at)
            call = {"id": call_id, "type": "function", "function": {"name": "", "arguments": ""}}
            self._calls.append(call)
            out = {"index": at, "id": call_id, "type": "function", "function": {}}
        else:
            call = self._calls[at]
            out = {"index": at, "function": {}}
        function_out = out["function"]
        if isinstance(name, str) and name:
            call["function"]["name"] += name
            function_out["name"] = name
        if isinstance(fragment, str):
            call["function"]["arguments"] += fragment
            function_out["arguments"] = fragment
        return out

    def calls(self) -> list[ToolCall]:
        """The whole calls so far, in order."""
        return self._calls


def whole_deltas(calls: Sequence[ToolCall]) -> list[ToolCall]:
    """Whole calls as the pieces of a stream, one per call (a replayed or unstreamed
    reply's calls, passed on to a streaming client)."""
    return [
        {
            "index": i,
            "id": call["id"],
            "type": call.get("type", "function"),
            "function": dict(call["function"]),
        }
        for i, call in enumerate(calls)
    ]


# -- the pass-through endpoints (/v1/embeddings, /v1/completions) --------------------

# A prompt or an embedding input as OpenAI takes it: a string, strings, or token ids.
TextInput = str | list[str] | list[int] | list[list[int]]


def input_items(value: TextInput | None) -> list[str | list[int]]:
    """The items of an input or prompt: a string or a list of token ids is one item, a
    list of strings or of token lists is one item each (null: one empty prompt)."""
    if value is None:
        return [""]
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [value]  # type: ignore[list-item]
    return list(value)  # type: ignore[arg-type]


@dataclass(slots=True)
class EmbeddingRequest:
    """One embeddings call: the upstream model, the input (one item or a list), and the
    other fields (``dimensions``, ``encoding_format``, ``user``) as given."""

    model: str
    input: TextInput
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Embeddings:
    """An embeddings reply: one vector per input item, in order. A vector is floats, or
    a string when the node sent it base64-encoded (little-endian float32)."""

    vectors: list[list[float] | str]
    usage: dict[str, int]
    node: str


@dataclass(slots=True)
class TextRequest:
    """One legacy completions call: the upstream model, the prompt, the other fields
    (``max_tokens``, ``n``, ``logprobs``...) as given, and whether to stream."""

    model: str
    prompt: TextInput
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False


@dataclass(slots=True)
class TextChoice:
    """A piece of one choice's text (all of it, unstreamed); ``finish_reason`` is set on
    its last piece. ``logprobs`` is the node's, passed on as sent."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


@dataclass(slots=True)
class TextChunk:
    """What a legacy completion yields: pieces of choices, and ``usage`` on the last
    chunk when the node sent it (a streamed reply's usage chunk has no choices)."""

    choices: list[TextChoice]
    usage: dict[str, int] | None
    node: str


class Transport(Protocol):
    """One model node. Its calls must respect ``deadline`` (``loop.time()`` based) and
    raise :class:`UpstreamTimeout` past it; they raise agentd errors only.

    Every call is a stream: a reply that comes whole (embeddings, an unstreamed
    completion) is a stream of one item, so the pool retries, breaks and counts all
    calls the same way.
    """

    name: str

    def stream(self, request: ChatRequest, deadline: float) -> AsyncIterator[Chunk]: ...

    def embed(self, request: EmbeddingRequest, deadline: float) -> AsyncIterator[Embeddings]: ...

    def complete_text(self, request: TextRequest, deadline: float) -> AsyncIterator[TextChunk]: ...


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
        content = message.get("content")
        # Most contents are strings: counted here, without a call per message.
        total += len(content) if type(content) is str else _content_chars(content)
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
