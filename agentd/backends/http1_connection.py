"""One HTTP/1.1 connection to an upstream, as an asyncio protocol: it writes a request and
parses the response as it arrives (the status line and headers, then a body framed by
``Content-Length``, chunked (decoded by :class:`agentd.fastpath.ChunkDecoder`) or by the
close of the connection, decompressed when ``gzip`` or ``deflate``), pausing the
transport while the caller is behind.

:class:`.http1_response.Response` is what the caller reads the body through. The pool
that opens connections and hands them to calls is :mod:`.http1`.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Final, Protocol

from ..errors import UpstreamError, UpstreamTimeout
from ..fastpath import ChunkDecoder, ChunkError
from .http1_response import Response, protocol_error

__all__ = ("Connection", "ConnectionPool", "StaleConnection")

_MAX_HEAD: Final = 64 * 1024
# Body bytes read and dropped after the caller is done, to reuse the connection (see drain).
_DRAIN_BYTES: Final = 64 * 1024
# How early a deadline's timer may fire (the resolution of the event loop's clock).
_CLOCK_S: Final = 0.001

# Response body framing.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


def _incomplete() -> UpstreamError:
    return UpstreamError(
        "upstream closed the stream before the reply ended", code="upstream_incomplete"
    )


class StaleConnection(UpstreamError):
    """A reused connection closed before a byte of the answer: send again on a new one."""


class ConnectionPool(Protocol):
    """What a connection needs of the pool that opened it."""

    loop: asyncio.AbstractEventLoop

    def lost(self, conn: Connection) -> None:
        """The connection closed (either side): its place is free."""

    def release(self, conn: Connection, ended: bool = False) -> None:
        """Take back the connection after its call (``ended``: the rest of its body
        is only the end of the reply)."""


class Connection(asyncio.Protocol):
    """One kept-alive connection; answers one request at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.response: Response | None = None
        self._head_waiter: asyncio.Future[None] | None = None
        self._buffer = bytearray()
        self._framing = _NONE
        self._remaining = 0  # body bytes left (_LENGTH)
        self._chunks = ChunkDecoder()  # a new one for each chunked body
        self._keep_alive = True
        self._got_bytes = False
        self._paused = False
        self.counted = True  # holds one of the pool's places until it closes
        self._draining = 0  # body bytes still taken after the caller was done (see drain)
        # The deadline of the call in progress, and the timer that checks it (see arm).
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        self._got_bytes = True
        try:
            if response.status == 0:
                self._buffer += data
                if not self._parse_head(response):
                    return
                data = bytes(self._buffer)
                self._buffer.clear()
                if not data:
                    return
            self._parse_body(response, data)
        except UpstreamError as exc:
            self._abort(exc)
            return
        if self._draining:
            self._drained(response, len(data))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        response = self.response
        if response is not None and not response.done:
            waiter = self._head_waiter
            if waiter is not None and not waiter.done():
                self._head_failed(self._lost_before_head(exc))
            elif self._framing == _UNTIL_CLOSE:
                response._finish()
            else:
                response._fail(_incomplete())
        self.pool.lost(self)

    # -- the request ------------------------------------------------------------------------

    async def request(self, head: bytes, body: bytes) -> Response:
        """Send one request; its response once the head has come."""
        assert self.transport is not None and self.response is None
        response = self.response = Response(self)
        self._got_bytes = False
        self._framing = _NONE
        waiter = self._head_waiter = self.loop.create_future()
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        try:
            await waiter
        finally:
            self._head_waiter = None
        return response

    def finished(self) -> bool:
        """Whether the response was read to its end and the connection may serve another."""
        response = self.response
        return (
            response is not None
            and response.done
            and response.error is None
            and not response._pieces
            and self._keep_alive
            and not self.closed
        )

    def drain(self) -> bool:
        """The caller read all the reply says before the end of its body (a stream to
        its last event, whose last chunk of the transfer encoding is still on its way,
        not a caller that gave up, whose model call must stop): read on
        and drop what comes, up to :data:`_DRAIN_BYTES`, then give the connection back
        to the pool again, reusable (a new connection costs the next call a connect).
        False when it cannot be reused (closed, failed, or not framed)."""
        response = self.response
        if (
            response is None
            or response.error is not None
            or self.closed
            or not self._keep_alive
            or self._framing not in (_LENGTH, _CHUNKED)
            or (self._framing == _LENGTH and self._remaining > _DRAIN_BYTES)
        ):
            return False
        self._draining = _DRAIN_BYTES
        response._pieces.clear()
        response._size = 0
        self.resume()
        return True

    def _drained(self, response: Response, size: int) -> None:
        response._pieces.clear()
        response._size = 0
        if response.done:
            self._draining = 0
            self.pool.release(self, True)
        elif size >= self._draining:
            self.response = None
            self.close()
        else:
            self._draining -= size

    def reset(self) -> None:
        self.response = None
        self._buffer.clear()
        self._remaining = 0
        if self._paused:
            self.resume()

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def arm(self, deadline: float) -> None:
        """Bound the call starting now by ``deadline``: past it, whatever it waits for
        fails with :class:`UpstreamTimeout`. The connection keeps one timer across its
        calls (one per call cost a timer made and cancelled each time): a timer due
        before ``deadline`` stays, and when it fires it waits on for the later one."""
        self.deadline = deadline
        timer = self.timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self.timer = self.loop.call_at(deadline, self._due)

    def _due(self) -> None:
        self.timer = None
        if self.closed or self.response is None or self.response.done:
            return  # idle, or all in: the caller's own pace is not the upstream's fault
        # (The loop's clock counts milliseconds: a timer may fire within one of its time.)
        if self.loop.time() < self.deadline - _CLOCK_S:
            self.timer = self.loop.call_at(self.deadline, self._due)  # a later call's
            return
        self._abort(UpstreamTimeout("the upstream did not answer within the deadline"))

    def _abort(self, exc: UpstreamError | UpstreamTimeout) -> None:
        response = self.response
        if response is not None:
            self._head_failed(exc)  # if the head is still awaited
            response._fail(exc)
        self.close()

    def _head_failed(self, exc: BaseException) -> None:
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _lost_before_head(self, exc: Exception | None) -> UpstreamError:
        if self.reused and not self._got_bytes:
            return StaleConnection("the kept-alive connection was closed", code="upstream_stale")
        detail = f": {exc.strerror or exc}" if isinstance(exc, OSError) else ""
        return UpstreamError(
            f"upstream connection failed: closed before the response{detail}",
            code="upstream_unreachable",
        )

    # -- parsing ----------------------------------------------------------------------------

    def _parse_head(self, response: Response) -> bool:
        """Parse the status line and headers once they are all in; True when done (the
        rest of the buffer is body). Informational (1xx) responses are skipped."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    raise protocol_error("the response head is too long")
                if not buffer.startswith(b"HTTP/"[: len(buffer)]):
                    raise protocol_error("not an HTTP response")
                return False
            lines = buffer[:end].decode("latin-1").split("\r\n")
            del buffer[: end + 4]
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            # (isdigit() would take "²", which int() refuses.)
            if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdecimal():
                raise protocol_error("not an HTTP/1.x status line")
            status = int(code)
            if 100 <= status < 200 and status != 101:
                continue
            headers = {}
            for line in lines[1:]:
                name, colon, value = line.partition(":")
                if not colon or not name or name != name.strip():
                    raise protocol_error("a header line without a name")
                name = name.lower()
                value = value.strip()
                if name in headers and name != "content-length":
                    headers[name] = f"{headers[name]}, {value}"
                else:
                    headers[name] = value
            break
        connection = headers.get("connection")
        if version == "HTTP/1.1":
            self._keep_alive = connection is None or "close" not in connection.lower()
        else:
            self._keep_alive = connection is not None and "keep-alive" in connection.lower()
        encoding = headers.get("content-encoding")
        if encoding is not None:
            encoding = encoding.lower()
            if encoding in ("gzip", "x-gzip"):
                response._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif encoding == "deflate":
                response._decoder = zlib.decompressobj()
            elif encoding != "identity":
                raise protocol_error(f"unsupported content encoding {encoding!r}")
        transfer = headers.get("transfer-encoding")
        if status in (204, 304):
            framing = _NONE
        elif transfer is not None:
            if transfer != "chunked" and transfer.lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise protocol_error(f"unsupported transfer encoding {transfer!r}")
            framing = _CHUNKED
            self._chunks = ChunkDecoder()
        else:
            length = headers.get("content-length")
            if length is None:
                framing = _UNTIL_CLOSE
                self._keep_alive = False
            elif not length.isdecimal():  # isdigit() would take "²", which int() refuses
                raise protocol_error("a bad Content-Length")
            else:
                framing = _LENGTH
                self._remaining = int(length)
        self._framing = framing
        response.status = status
        response.reason = reason
        response.headers = headers
        if framing == _NONE or (framing == _LENGTH and not self._remaining):
            response._finish()
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def _parse_body(self, response: Response, data: bytes) -> None:
        framing = self._framing
        if response.done:
            if data:
                self._keep_alive = False  # more than the body: nothing to trust after it
            return
        if framing == _LENGTH:
            if len(data) >= self._remaining:
                if len(data) > self._remaining:
                    self._keep_alive = False
                response._body(data[: self._remaining])
                self._remaining = 0
                response._finish()
            else:
                self._remaining -= len(data)
                response._body(data)
        elif framing == _CHUNKED:
            self._parse_chunks(response, data)
        else:  # until close
            response._body(data)

    def _parse_chunks(self, response: Response, data: bytes) -> None:
        # The body bytes of one read go to the response at once (a chunk each would cost
        # a call and a wake-up per chunk), those before a malformed line included.
        chunks = self._chunks
        try:
            body = chunks.feed(data)
        except ChunkError as exc:
            if exc.body:
                response._body(exc.body)
            raise protocol_error(str(exc)) from None
        if body:
            response._body(body)
        if chunks.done:
            if chunks.extra:
                self._keep_alive = False  # more than the body: nothing to trust after it
            response._finish()
