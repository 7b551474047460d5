"""The ``openai`` protocol's pass-through endpoints: ``{url}/embeddings`` and
``{url}/completions`` (legacy), beside the chat stream of :mod:`.openai`.

The request's fields go upstream as the client sent them, with the agent's upstream
model name. The reply is read into the backend's neutral types (:class:`Embeddings`,
:class:`TextChunk`), which the wire layer renders in OpenAI's shapes again, so a
quirky upstream (extra fields, a JSON reply to ``stream: true``, no ``[DONE]``) still
gives clients well-formed objects.

Usage accounting: the upstream ``usage`` when sent (a streamed completion asks for it
with ``stream_options.include_usage``); otherwise the inputs' characters / 4 and, for
completions, one token per text piece.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..errors import UpstreamError
from .http1 import Response
from .openai import (
    DONE,
    EventSplitter,
    OpenAIClient,
    OpenAINode,
    event_data,
    stream_error,
)
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

__all__ = ("OpenAIEndpointsClient", "OpenAIEndpointsNode")

_JSON = "application/json"
_SSE = "text/event-stream"


class OpenAIEndpointsClient(OpenAIClient):
    """The shared session of an ``openai`` backend whose nodes serve every endpoint."""

    def node(self, url: str) -> OpenAIEndpointsNode:
        return OpenAIEndpointsNode(self, url)


class OpenAIEndpointsNode(OpenAINode):
    """One OpenAI-compatible endpoint, with ``/embeddings`` and ``/completions``."""

    def __init__(self, client: OpenAIClient, url: str) -> None:
        super().__init__(client, url)
        base = url.rstrip("/")
        self.embeddings_url = base + "/embeddings"
        self.completions_url = base + "/completions"

    async def embed(self, request: EmbeddingRequest, deadline: float) -> AsyncIterator[Embeddings]:
        """POST the embeddings request; one item: the whole reply."""
        body = {**request.params, "model": request.model, "input": request.input}
        async with self.post(self.embeddings_url, body, deadline, _JSON) as response:
            reply = orjson.loads(await response.read())
            embeddings = _embeddings(reply, request, self.name)
        yield embeddings

    async def complete_text(
        self, request: TextRequest, deadline: float
    ) -> AsyncIterator[TextChunk]:
        """POST the completion request; streamed, its chunks as they come."""
        body: dict[str, Any] = {
            **request.params,
            "model": request.model,
            "prompt": request.prompt,
            "stream": request.stream,
        }
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        accept = _SSE if request.stream else _JSON
        async with self.post(self.completions_url, body, deadline, accept) as response:
            if response.content_type == _JSON:  # unstreamed, or a server that ignores stream
                yield _text_chunk(orjson.loads(await response.read()), request, self.name)
                return
            async for chunk in _text_events(response, request, self.name):
                yield chunk


def _malformed(what: str) -> UpstreamError:
    return UpstreamError(f"upstream sent a malformed reply: {what}", code="upstream_protocol")


def _input_tokens(value: Any) -> int:
    items = input_items(value)
    return sum(estimate_tokens(len(i)) if isinstance(i, str) else len(i) for i in items)


def _embeddings(reply: Any, request: EmbeddingRequest, node: str) -> Embeddings:
    data = reply["data"]
    if not isinstance(data, list):
        raise _malformed("data is not a list")
    ordered = sorted(data, key=lambda item: item.get("index", 0))
    vectors: list[list[float] | str] = []
    for item in ordered:
        vector = item["embedding"]
        if not isinstance(vector, list | str):
            raise _malformed("an embedding is neither a list nor a base64 string")
        vectors.append(vector)
    expected = len(input_items(request.input))
    if len(vectors) != expected:
        raise _malformed(f"{len(vectors)} embeddings for {expected} inputs")
    usage = reply.get("usage")
    if not isinstance(usage, dict):
        tokens = _input_tokens(request.input)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return Embeddings(vectors, usage, node)


def _choices(raw: Any) -> list[TextChoice]:
    choices = []
    for choice in raw or ():
        logprobs = choice.get("logprobs")
        choices.append(
            TextChoice(
                int(choice.get("index") or 0),
                str(choice.get("text") or ""),
                choice.get("finish_reason"),
                logprobs if isinstance(logprobs, dict) else None,
            )
        )
    return choices


def _text_chunk(reply: Any, request: TextRequest, node: str) -> TextChunk:
    """A whole ``text_completion`` object as one chunk (every choice finished)."""
    choices = _choices(reply["choices"])
    for choice in choices:
        choice.finish_reason = choice.finish_reason or "stop"
    usage = reply.get("usage")
    if not isinstance(usage, dict):
        usage = usage_dict(_input_tokens(request.prompt), len(choices))
    return TextChunk(choices, usage, node)


async def _text_events(
    response: Response, request: TextRequest, node: str
) -> AsyncIterator[TextChunk]:
    """The streamed chunks; the last one carries the usage (the upstream's, or an
    estimate). A body that ends without ``[DONE]`` is accepted once a choice finished."""
    splitter = EventSplitter()
    pieces = 0
    finished = False
    usage: dict[str, int] | None = None

    def take(payload: bytes) -> TextChunk | None:
        nonlocal pieces, finished, usage
        obj = orjson.loads(payload)
        error = obj.get("error")
        if error:
            raise stream_error(error)
        if isinstance(obj.get("usage"), dict):
            usage = obj["usage"]
        choices = _choices(obj.get("choices"))
        if not choices:
            return None
        pieces += sum(1 for c in choices if c.text)
        finished = finished or any(c.finish_reason for c in choices)
        return TextChunk(choices, None, node)

    def last() -> TextChunk:
        return TextChunk([], usage or usage_dict(_input_tokens(request.prompt), pieces), node)

    while data := await response.read_any():
        for event in splitter.feed(data):
            payload = event_data(event)
            if payload is None:
                continue
            if payload == DONE:
                yield last()
                return
            chunk = take(payload)
            if chunk is not None:
                yield chunk
    rest = splitter.rest.strip()
    payload = event_data(rest) if rest else None
    if payload is not None and payload != DONE:
        chunk = take(payload)
        if chunk is not None:
            yield chunk
    if payload == DONE or finished:
        yield last()
        return
    raise UpstreamError(
        "upstream closed the stream before the reply ended", code="upstream_incomplete"
    )
