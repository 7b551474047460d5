"""The ``openai`` protocol: Chat Completions over HTTP, streamed as server-sent events.

One HTTP/1.1 client per backend (:mod:`.http1`, agentd's own: a call through aiohttp's
client cost 1.7x the instructions) holds a kept-alive connection pool per node
(``max_connections`` each). The call's deadline is checked by one timer per
connection that also bounds every read of the body, so calls and chunks cost no timer
each.

Usage accounting: the upstream ``usage`` is returned when sent (we ask for it with
``stream_options.include_usage``); otherwise ``prompt_tokens`` is the characters of all
messages / 4 and ``completion_tokens`` the number of content and tool call deltas
(servers send about one token per delta).

Tool calls: the request's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` are
among its params, sent as given. A streamed reply's ``delta.tool_calls`` pieces are
passed on as they come (:class:`~.types.ToolCallBuffer` renumbers and reassembles them)
and the last chunk carries the whole calls; an unstreamed reply's ``message.tool_calls``
come as one piece per call. A reply with tool calls whose finish reason says ``stop``
(some servers do) finishes with ``tool_calls``, as OpenAI's does.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import orjson
from yarl import URL

from .. import __version__
from ..config import BackendConfig
from ..errors import BadRequest, UpstreamError
from .http1 import Http1Client, Origin, Response
from .http1_connection import Connection
from .types import (
    ChatRequest,
    Chunk,
    ToolCallBuffer,
    UpstreamAuth,
    UpstreamRejected,
    estimate_tokens,
    message_chars,
    usage_dict,
)

__all__ = (
    "DONE",
    "EventSplitter",
    "OpenAIClient",
    "OpenAINode",
    "error_for_status",
    "error_from",
    "event_data",
    "stream_error",
    "upstream_errors",
)

log = logging.getLogger(__name__)

_ERROR_BODY_LIMIT = 64 * 1024
DONE = b"[DONE]"
_DATA = b"data:"
# Bytes looked for as ints: ``b"\n" in data`` costs Python 3.11 a formatted TypeError
# (it first tries the needle as an int), ``10 in data`` does not.
_LF, _CR = 10, 13
_JSON = "application/json"
_SSE = "text/event-stream"


class OpenAIClient:
    """The HTTP client shared by one backend's nodes; lives between start and close."""

    def __init__(self, config: BackendConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.http: Http1Client | None = None
        self.authorization: str | None = None
        if config.api_key_env:
            key = (os.environ if environ is None else environ).get(config.api_key_env, "")
            if key:
                self.authorization = f"Bearer {key}"
            else:
                log.error(
                    "backend %s: environment variable %s is unset or empty; calling "
                    "upstream without credentials",
                    config.name,
                    config.api_key_env,
                )
        self.nodes = tuple(self.node(url) for url in config.urls)

    def node(self, url: str) -> OpenAINode:
        """One of its nodes (a subclass makes its own kind)."""
        return OpenAINode(self, url)

    async def start(self) -> None:
        if self.http is None:
            self.http = Http1Client(self.config.max_connections, self.config.connect_timeout_s)

    async def close(self) -> None:
        http, self.http = self.http, None
        if http is not None:
            await http.close()

    def __repr__(self) -> str:  # never show the headers: they hold the key
        return f"OpenAIClient({self.config.name!r}, nodes={len(self.nodes)})"


class _Target:
    """One upstream URL: its origin and the request head before ``Content-Length``'s value,
    built once (an ``Accept`` per endpoint kind)."""

    __slots__ = ("heads", "origin")

    def __init__(self, client: OpenAIClient, url: str) -> None:
        origin, path = Http1Client.origin_of(url)
        self.origin: Origin = origin
        authorization = client.authorization or origin.authorization
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {origin.host_header}",
            f"User-Agent: agentd/{__version__}",
            "Content-Type: application/json",
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        common = "\r\n".join(lines)
        self.heads = {
            accept: f"{common}\r\nAccept: {accept}\r\nContent-Length: ".encode("latin-1")
            for accept in (_SSE, _JSON)
        }


def node_name(url: str) -> str:
    """A node's label (logs, metrics): its URL without credentials or trailing slash."""
    parsed = URL(url)
    if parsed.user or parsed.password:
        parsed = parsed.with_user(None)
    return str(parsed).rstrip("/")


class OpenAINode:
    """One OpenAI-compatible endpoint (``{url}/chat/completions``)."""

    def __init__(self, client: OpenAIClient, url: str) -> None:
        self.client = client
        self.name = node_name(url)
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self._targets: dict[str, _Target] = {}

    async def stream(self, request: ChatRequest, deadline: float) -> AsyncIterator[Chunk]:
        """POST the request with ``stream: true`` and yield its content as chunks."""
        body = {
            **request.params,
            "model": request.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        # What post() does, written out: the hottest call, one async generator (each
        # layer costs every chunk a pass through it).
        http, conn, response = await self._send(self.endpoint, body, deadline, _SSE)
        ended = False  # the reply said all: its body's last bytes may still be on their way
        try:
            if response.content_type == _JSON:
                yield await _whole_reply(response, request, self.name)
                return
            reply = _Reply(request, self.name)
            splitter = EventSplitter()
            while data := await response.read_any():
                for event in splitter.feed(data):
                    if event.startswith(b"data: ") and _LF not in event:
                        payload: bytes | None = event[6:]  # event_data's common case
                    else:
                        payload = event_data(event)
                        if payload is None:
                            continue  # a comment (keep-alive) or an event without data
                    if payload == DONE:
                        ended = True
                        yield reply.final()
                        return
                    chunk = reply.take(payload)
                    if chunk is not None:
                        yield chunk
            for chunk in reply.ended(splitter.rest):
                yield chunk
        except _MALFORMED:
            raise _malformed_reply() from None
        finally:
            http.release(conn, ended)

    @contextlib.asynccontextmanager
    async def post(
        self, url: str, body: dict[str, Any], deadline: float, accept: str = _SSE
    ) -> AsyncIterator[Response]:
        """The upstream's 200 response to ``body``; its errors, and those of reading it
        inside the block, as agentd's upstream errors."""
        http, conn, response = await self._send(url, body, deadline, accept)
        try:
            with upstream_errors():
                yield response
        finally:
            http.release(conn)

    async def _send(
        self, url: str, body: dict[str, Any], deadline: float, accept: str
    ) -> tuple[Http1Client, Connection, Response]:
        """Send ``body``; the client, the connection (give it back with
        ``release``) and the response, whose status is 200; else the upstream's error."""
        http = self.client.http
        if http is None:
            raise RuntimeError(f"backend {self.client.config.name!r} is not started")
        try:
            payload = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            raise BadRequest(
                f"the request cannot be sent as JSON: {exc}", code="invalid_params"
            ) from None
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _Target(self.client, url)
        head = target.heads[accept] + b"%d\r\n\r\n" % len(payload)
        conn, response = await http.request(target.origin, head, payload, deadline)
        if response.status != 200:
            try:
                raise await error_from(response)
            finally:
                http.release(conn)
        return http, conn, response


# The JSON parser's errors in reading a node's reply: not JSON, or JSON of the wrong shape
# (a list where an object belongs...).
_MALFORMED = (orjson.JSONDecodeError, AttributeError, TypeError, IndexError, KeyError)


def _malformed_reply() -> UpstreamError:
    return UpstreamError("upstream sent a malformed reply", code="upstream_protocol")


@contextlib.contextmanager
def upstream_errors() -> Iterator[None]:
    """The JSON parser's errors in reading a node's reply, as agentd's (the client's own
    errors are agentd's already)."""
    try:
        yield
    except _MALFORMED:
        raise _malformed_reply() from None


def error_for_status(status: int, message: str) -> UpstreamError | UpstreamRejected:
    """The agentd error for an upstream HTTP error status (see the module's mapping)."""
    if status in (401, 403):
        # The upstream's message may quote part of the key: it stays out of our reply.
        return UpstreamAuth(f"upstream refused the credentials ({status})")
    if status == 429:
        return UpstreamError(
            f"upstream rate limited the call (429): {message}", code="upstream_rate_limited"
        )
    if 400 <= status < 500 and status != 408:
        return UpstreamRejected(f"upstream rejected the request ({status}): {message}")
    return UpstreamError(f"upstream failed ({status}): {message}")


async def error_from(response: Response) -> UpstreamError | UpstreamRejected:
    raw = await response.read(_ERROR_BODY_LIMIT)
    message = ""
    try:
        error = orjson.loads(raw).get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or "")
        elif isinstance(error, str):
            message = error
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if not message:
        message = response.reason or "no detail"
    return error_for_status(response.status, message[:500])


def _fallback_usage(request: ChatRequest, deltas: int) -> dict[str, int]:
    return usage_dict(estimate_tokens(message_chars(request.messages)), deltas)


async def _whole_reply(response: Response, request: ChatRequest, node: str) -> Chunk:
    """A server that ignored ``stream: true`` and sent one ``chat.completion`` object."""
    reply = orjson.loads(await response.read())
    choice = (reply.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    finish = choice.get("finish_reason") or "stop"
    calls = message.get("tool_calls")
    if not calls:
        usage = reply.get("usage") or _fallback_usage(request, 1 if text else 0)
        return Chunk(text, finish, usage, node)
    if not isinstance(calls, list):
        raise TypeError("tool_calls must be a list")
    buffer = ToolCallBuffer()
    deltas = [buffer.add({**call, "index": i}) for i, call in enumerate(calls)]
    usage = reply.get("usage") or _fallback_usage(request, (1 if text else 0) + len(calls))
    return Chunk(text, _called(finish), usage, node, deltas, buffer.calls())


def _called(finish: str) -> str:
    """The finish reason of a reply that made tool calls."""
    return "tool_calls" if finish == "stop" else finish


def event_data(event: bytes) -> bytes | None:
    """The ``data`` of one SSE event (its ``data:`` lines joined by newlines), or None."""
    if event.startswith(b"data: ") and _LF not in event:
        return event[6:]  # the common case: one line
    lines = []
    for line in event.split(b"\n"):
        if line.startswith(_DATA):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(lines) if lines else None


class EventSplitter:
    """Cuts a byte stream into SSE events (the text between blank lines).

    Line ends may be CRLF, CR or LF (the SSE spec allows all three). A CR ending a read
    ends a line at once; an LF starting the next read is then its other half, dropped.
    """

    __slots__ = ("_after_cr", "rest")

    def __init__(self) -> None:
        self.rest = b""  # an incomplete event, waiting for more bytes
        self._after_cr = False

    def feed(self, data: bytes) -> list[bytes]:
        """The events completed by ``data``."""
        if self._after_cr:
            self._after_cr = False
            if data.startswith(b"\n"):
                data = data[1:]
        if _CR in data:
            self._after_cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self.rest + data if self.rest else data
        events = buffer.split(b"\n\n")
        self.rest = events.pop()
        return events


class _Reply:
    """What the stream has said so far beyond the text already passed on."""

    __slots__ = ("calls", "deltas", "finish", "node", "request", "tail", "usage")

    def __init__(self, request: ChatRequest, node: str) -> None:
        self.request = request
        self.node = node
        self.deltas = 0
        self.finish: str | None = None
        self.tail = ""  # text that came with or after the finish reason
        self.usage: dict[str, int] | None = None
        self.calls: ToolCallBuffer | None = None  # made at the first tool call piece

    def take(self, payload: bytes) -> Chunk | None:
        """Digest one ``chat.completion.chunk``; return what to pass on now, if anything."""
        obj = orjson.loads(payload)
        error = obj.get("error")
        if error:
            raise stream_error(error)
        usage = obj.get("usage")
        if usage:
            self.usage = usage
        choices = obj.get("choices")
        if not choices:
            return None  # the usage chunk has no choices
        choice = choices[0]
        delta = choice.get("delta")
        reason = choice.get("finish_reason")
        if reason:
            self.finish = reason
        if not delta:
            return None
        text = delta.get("content")
        pieces = delta.get("tool_calls")
        if pieces:
            return self._calls(pieces, text)
        if not text:
            return None
        self.deltas += 1
        if self.finish is None:
            return Chunk(text, None, None, self.node)
        self.tail += text  # rides on the final chunk
        return None

    def _calls(self, pieces: Any, text: str | None) -> Chunk:
        if not isinstance(pieces, list):
            raise TypeError("tool_calls must be a list")
        if self.calls is None:
            self.calls = ToolCallBuffer()
        add = self.calls.add
        self.deltas += len(pieces) + (1 if text else 0)
        return Chunk(text or "", None, None, self.node, [add(piece) for piece in pieces])

    def ended(self, rest: bytes) -> list[Chunk]:
        """The last chunks of a body that ended without ``[DONE]`` and its blank line
        (``rest``: what came after the last whole event): accepted if the reply
        finished, else :class:`UpstreamError`."""
        last = rest.strip()
        payload = event_data(last) if last else None
        chunks = []
        if payload is not None and payload != DONE:
            chunk = self.take(payload)
            if chunk is not None:
                chunks.append(chunk)
        if payload == DONE or self.finish is not None:
            chunks.append(self.final())
            return chunks
        raise UpstreamError(
            "upstream closed the stream before the reply ended", code="upstream_incomplete"
        )

    def final(self) -> Chunk:
        usage = self.usage or _fallback_usage(self.request, self.deltas)
        finish = self.finish or "stop"
        if self.calls:
            return Chunk(self.tail, _called(finish), usage, self.node, None, self.calls.calls())
        return Chunk(self.tail, finish, usage, self.node)


def stream_error(error: Any) -> UpstreamError | UpstreamRejected:
    """An error object sent inside the stream (vLLM and others do this)."""
    if isinstance(error, dict):
        message = str(error.get("message") or "error in stream")
        code = error.get("code")
        status = code if isinstance(code, int) else 500
        return error_for_status(status, message[:500])
    return UpstreamError(f"upstream failed in the stream: {str(error)[:500]}")
