"""The front's streamed chat completion: ``POST /v1/chat/completions`` with
``"stream": true``, no session and no tools in the request (what the front takes
unstreamed too, :mod:`.front_chat`), written to the connection as the turn's listener
hears it, without aiohttp's request, response and stream writer.

The bytes are those of the route (:class:`.chat._ChunkStream` through
:func:`.http.start_sse`): nothing before the first delta, so a turn that fails before
it is a JSON error (rendered by the front as :func:`.http.error_response`); then the
head aiohttp writes for that stream (``text/event-stream``, ``Cache-Control``,
``X-Accel-Buffering``, ``X-Cache``, the caller's ``x-ratelimit-*``, chunked transfer,
``Date``, ``Server``, and ``Connection: close`` while the worker drains), each chunk of
OpenAI's format in a chunk of the transfer encoding, the finish (and usage) chunks,
``data: [DONE]`` and the last chunk. An error after the first byte is an error chunk,
then ``[DONE]``, as the route sends it.

The chunks of one pass of the event loop (those one upstream read brought) go out in
one write at its end (a write each cost a send and a wake-up of the client each), the
end of the stream with them when it came in the same pass. The end is written when the
turn says its reply is whole (:meth:`.Listener.ended`, at the model's last chunk), not
after the turn's bookkeeping (the pool's, the limits', the metrics'): the client's wait
for ``[DONE]`` does not include it. Back-pressure as aiohttp's
writer: while the transport's buffer is over its high-water mark (the front's
connection is paused) the turn waits for it to drain before its next chunk, so a client
that does not read holds the turn (and its model call, which is not read either)
instead of making the worker buffer its reply. A client that leaves ends the turn at
its next chunk, or at once if it waits for the buffer to drain, with the error a write
to a closed connection raises in the route (which closes the model call): the request
is counted with status 499.

A stream answered by the front is an ``int`` where an answer is expected: the status
it was counted with, its bytes already written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from ..agent import Agents, Listener, TurnRequest
from ..errors import AgentdError, Internal
from ..fastpath import ChatBody, parse_chat
from ..tools import ToolResult
from ..wire.chat import DONE, Chunks, completion_id, error_frame
from ..wire.tool_progress import call_ended, call_started
from .front_chat import ROUTE, Answer, HotChat, _credential, error_answer
from .middleware import CLIENT_CLOSED

__all__ = ("STREAM_MARK", "HotStream")


class Connection(Protocol):
    """What a stream needs of the front's connection (:class:`.front.FrontConnection`)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    paused: bool  # the client does not read: wait for drained()

    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    async def drained(self) -> None: ...
    def dated(self) -> bytes: ...


log = logging.getLogger(__name__)

# What a body must hold to be a stream (a body without it is not one, whatever else it
# says: the front then takes it as a plain chat completion).
STREAM_MARK = b'"stream"'
_TOOL_PARAMS = frozenset(("tools", "tool_choice", "parallel_tool_calls"))

# The head of every stream, in aiohttp's order: the route's headers, then its own.
_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"X-Accel-Buffering: no\r\nX-Cache: "
)
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class HotStream:
    """A worker's streamed chat completions, as the front answers them."""

    def __init__(self, chat: HotChat) -> None:
        self.chat = chat
        self.agents: Agents = chat.agents

    def begin(
        self, raw: bytes, authorization: bytes | None, conn: Connection
    ) -> Coroutine[Any, Any, Answer | int] | None:
        """The coroutine that streams the body ``raw`` to ``conn``, or the plain chat
        completion's (:meth:`HotChat.begin`) when it is not a stream, or None
        (aiohttp's request)."""
        if raw in self.chat.memo:  # a plain completion's body seen lately: not parsed again
            return self.chat.begin(raw, authorization)
        try:
            body = parse_chat(raw, None)
        except Exception:
            return None  # aiohttp says the same
        if not body.stream:
            return self.chat.begin(raw, authorization)
        if body.session_id is not None:
            return None
        params = body.params
        if params and not _TOOL_PARAMS.isdisjoint(params):
            return None
        return self._stream(body, _credential(authorization), conn)

    async def _stream(
        self, body: ChatBody, credential: str | None, conn: Connection
    ) -> Answer | int:
        found = await self.chat.turn_of(body, credential)
        if found is None:
            return None
        turn = found[1]
        # (A stream's head has no Server-Timing: the parse time is not needed.)
        deadline = conn.loop.time() + self.chat.turn_timeout
        return await _Writer(conn, turn, body.include_usage).run(self.agents, deadline)


class _Writer(Listener):
    """One streamed turn, written to its connection as it comes."""

    __slots__ = (
        "cache",
        "chunks",
        "conn",
        "ended_as",
        "include_usage",
        "pending",
        "ratelimit",
        "started",
        "turn",
    )

    def __init__(self, conn: Connection, turn: TurnRequest, include_usage: bool) -> None:
        self.conn, self.turn, self.include_usage = conn, turn, include_usage
        self.chunks = Chunks(completion_id(), int(time.time()), turn.agent)
        self.cache = "bypass"
        self.ratelimit: Mapping[str, str] = {}
        self.started = False
        # Frames not yet written: those of one pass of the event loop go in one write.
        self.pending: list[bytes] = []
        # The status the stream ended with once its end is written (:meth:`ended`).
        self.ended_as: int | None = None

    async def run(self, agents: Agents, deadline: float) -> Answer | int:
        chunks = self.chunks
        try:
            done = await agents.run(self.turn, deadline=deadline, listener=self)
            if self.ended_as is not None:
                return self.ended_as
            end = [chunks.finish(done.finish_reason, self.turn.session_id, done.seq)]
            if self.include_usage:
                end.append(chunks.usage(done.usage))
        except AgentdError as exc:
            if self.ended_as is not None:  # after the end: the client has its reply
                log.error("error after a stream's end on POST %s: %s", ROUTE, exc)
                return self.ended_as
            if not self.started:
                return error_answer(exc)
            end = [error_frame(exc)]  # the head is gone: said in the stream, as OpenAI does
        except Exception as exc:
            if isinstance(exc, ConnectionError) and self._gone():
                return CLIENT_CLOSED  # as the route's middleware counts it
            log.exception("unhandled error on POST %s", ROUTE)
            if self.ended_as is not None:
                return 500
            if not self.started:
                return error_answer(Internal("internal server error"))
            self._flush()
            self.conn.close()  # a stream cut short: the client sees no [DONE]
            return 500
        return self._end(end)

    def _end(self, end: list[bytes]) -> int:
        """Write the frames not written yet, ``end`` and ``[DONE]``: the status."""
        if self._gone():
            return CLIENT_CLOSED
        data = self.pending
        self.pending = []
        if not self.started:
            data.append(self._head() + _chunk(self.chunks.role()))
        data += [_chunk(frame) for frame in end]
        data.append(_END)
        self.conn.send(b"".join(data))
        return 200

    def _gone(self) -> bool:
        transport = self.conn.transport
        return transport is None or transport.is_closing()

    def _head(self) -> bytes:
        self.started = True
        lines = [_HEAD, self.cache.encode(), b"\r\n"]
        for name, value in self.ratelimit.items():
            lines.append(f"{name}: {value}\r\n".encode())
        lines += (_CHUNKED, self.conn.dated(), b"\r\n")
        return b"".join(lines)

    async def _write(self, frame: bytes, first: str | None = "") -> None:
        """Write one frame (the head and the role chunk before the first) once the event
        loop's pass ends, with the others of the pass (one upstream read's frames make
        one write, and one wake-up of the client); wait while the client does not
        read; raise as aiohttp's writer when the client left."""
        conn = self.conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the stream")
        pending = self.pending
        if not pending:
            conn.loop.call_soon(self._flush)
        if self.started:
            pending.append(_chunk(frame))
        else:
            pending.append(self._head() + _chunk(self.chunks.role(first)) + _chunk(frame))
        if conn.paused:
            await conn.drained()

    def _flush(self) -> None:
        """Write the frames not written yet (the end of a stream takes them along)."""
        pending = self.pending
        if not pending:
            return
        self.pending = []
        transport = self.conn.transport
        if transport is not None and not transport.is_closing():
            transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    # -- Listener ---------------------------------------------------------------------

    def source(self, cache: str) -> None:
        self.cache = cache

    def limits(self, headers: Mapping[str, str]) -> None:
        self.ratelimit = headers

    def ended(self, finish_reason: str, usage: Mapping[str, Any]) -> None:
        end = [self.chunks.finish(finish_reason, self.turn.session_id)]
        if self.include_usage:
            end.append(self.chunks.usage(usage))
        self.ended_as = self._end(end)

    async def delta(self, text: str) -> None:
        await self._write(self.chunks.content(text))

    async def tool_deltas(self, pieces: list[dict[str, Any]]) -> None:
        await self._write(self.chunks.tool_calls(pieces), None)

    async def tool_call(self, call: Mapping[str, Any], server: str) -> None:
        await self._write(self.chunks.progress(call_started(call, server)))

    async def tool_result(self, call: Mapping[str, Any], result: ToolResult) -> None:
        doc = call_ended(call, result.outcome, result.is_error, result.text)
        await self._write(self.chunks.progress(doc))


def _chunk(data: bytes) -> bytes:
    """``data`` as one chunk of the chunked transfer encoding."""
    return b"%x\r\n%b\r\n" % (len(data), data)


# A stream's last bytes: ``data: [DONE]`` and the last chunk.
_END = _chunk(DONE) + _LAST_CHUNK
