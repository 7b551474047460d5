"""A lean HTTP/1.1 client for upstream model calls, on an asyncio protocol.

aiohttp's client spends most of a loopback call in its own machinery (request and
response objects, tracing hooks, the connector's bookkeeping, a timer per read); this one
writes the request in one ``write`` and parses the response as it arrives, with one timer
per call for the whole deadline.

What it does: a kept-alive connection pool per origin (at most ``limit`` connections,
callers beyond it wait for one), bodies framed by ``Content-Length``, chunked or by the
close of the connection, ``gzip`` and ``deflate`` content encodings, TLS through the
loop's ``create_connection`` with a default ``SSLContext``, Basic credentials from the
URL. A kept-alive connection the server closed while idle is found out before reuse, or,
when the close crosses the request, the request is sent again once on a new connection
(only when not a byte of the answer came back).

What it does not do: redirects (a 3xx is the upstream's answer, an error to agentd),
proxies, cookies, HTTP/2, ``Expect: 100-continue``, brotli. agentd's ``openai`` backend
needs none of them for an OpenAI-compatible server.

Errors are agentd's: :class:`UpstreamTimeout` at the deadline, :class:`UpstreamError`
with ``upstream_unreachable`` (no connection, or closed before the answer),
``upstream_protocol`` (not HTTP/1.x) or ``upstream_incomplete`` (closed mid-body).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ssl
import zlib
from typing import Final

from yarl import URL

from ..errors import UpstreamError, UpstreamTimeout

__all__ = ("Http1Client", "Origin", "Response")

_MAX_HEAD: Final = 64 * 1024
_MAX_CHUNK_LINE: Final = 4096
# Unread body bytes past which the connection stops reading until the caller catches up.
_HIGH_WATER: Final = 256 * 1024
# A connection idle longer than this is closed rather than reused (servers close theirs
# after 5-75 s; reusing one at that moment races their close).
KEEPALIVE_S: Final = 15.0

_default_ssl: ssl.SSLContext | None = None

# Response body framing.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)
# Chunked decoding states.
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


def _protocol_error(what: str) -> UpstreamError:
    return UpstreamError(f"upstream sent a malformed reply: {what}", code="upstream_protocol")


def _incomplete() -> UpstreamError:
    return UpstreamError(
        "upstream closed the stream before the reply ended", code="upstream_incomplete"
    )


class Origin:
    """Where requests go (scheme, host, port) and the bytes every request to it starts
    its headers with."""

    __slots__ = ("authorization", "host", "host_header", "port", "ssl")

    def __init__(self, url: URL, ssl_context: ssl.SSLContext | None) -> None:
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"not an http(s) URL: {url}")
        self.host: str = url.raw_host
        self.port: int = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl_context if url.scheme == "https" else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        if not url.is_default_port():
            host = f"{host}:{self.port}"
        self.host_header = host
        self.authorization: str | None = None
        if url.user is not None:
            pair = f"{url.user}:{url.password or ''}".encode()
            self.authorization = "Basic " + base64.b64encode(pair).decode("ascii")


class Response:
    """One response as it arrives: its head once :meth:`Connection.request` returns, its
    body through :meth:`read_any` / :meth:`read`."""

    __slots__ = (
        "_conn",
        "_decoder",
        "_pieces",
        "_size",
        "_waiter",
        "done",
        "error",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self._pieces: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = None
        self.done = False  # the whole body has arrived
        self.error: BaseException | None = None

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters (aiohttp's ``content_type``)."""
        value = self.headers.get("content-type", "application/octet-stream")
        return value.partition(";")[0].strip().lower()

    async def read_any(self) -> bytes:
        """The body bytes that came since the last read, waiting for some; ``b""`` at the
        end of the body."""
        while True:
            if self._pieces:
                return self._take()
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            await self._wait()

    async def read(self, limit: int = -1) -> bytes:
        """The rest of the body (at most ``limit`` bytes when ``limit >= 0``)."""
        parts = []
        size = 0
        while limit < 0 or size < limit:
            data = await self.read_any()
            if not data:
                break
            parts.append(data)
            size += len(data)
        body = b"".join(parts)
        if 0 <= limit < len(body):
            self._pieces.appendleft(body[limit:])  # not read: it stays for the next reader
            self._size += len(body) - limit
            body = body[:limit]
        return body

    def _take(self) -> bytes:
        pieces = self._pieces
        data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        if self._size >= _HIGH_WATER:
            self._conn.resume()
        self._size = 0
        return data

    async def _wait(self) -> None:
        waiter = self._waiter = self._conn.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _body(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error:
                self._fail(_protocol_error("the body does not decompress"))
                return
            if not data:
                return
        self._pieces.append(data)
        self._size += len(data)
        if self._size >= _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            rest = self._decoder.flush()
            if rest:
                self._pieces.append(rest)
        self.done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None and not self.done:
            self.error = exc
            self._wake()


class Connection(asyncio.Protocol):
    """One kept-alive connection; answers one request at a time."""

    def __init__(self, pool: _OriginPool) -> None:
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
        self._remaining = 0  # body bytes left (_LENGTH), or of the current chunk
        self._chunk_state = _SIZE
        self._keep_alive = True
        self._got_bytes = False
        self._paused = False
        self.counted = True  # holds one of the pool's places until it closes
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

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
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

    def reset(self) -> None:
        self.response = None
        self._buffer.clear()
        self._chunk_state = _SIZE
        self._remaining = 0
        if self._paused:
            self.resume()

    def close(self) -> None:
        self.closed = True
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

    def timed_out(self) -> None:
        """The call's deadline: whatever it waits for fails with :class:`UpstreamTimeout`."""
        if self.response is None or self.response.done:
            return  # all in: the caller's own pace is not the upstream's fault
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
            return _StaleConnection("the kept-alive connection was closed", code="upstream_stale")
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
                    raise _protocol_error("the response head is too long")
                if not buffer.startswith(b"HTTP/"[: len(buffer)]):
                    raise _protocol_error("not an HTTP response")
                return False
            lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            del buffer[: end + 4]
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
                raise _protocol_error("not an HTTP/1.x status line")
            status = int(code)
            if 100 <= status < 200 and status != 101:
                continue
            headers = {}
            for line in lines[1:]:
                name, colon, value = line.partition(":")
                if not colon or not name or name != name.strip():
                    raise _protocol_error("a header line without a name")
                name = name.lower()
                value = value.strip()
                if name in headers and name != "content-length":
                    headers[name] = f"{headers[name]}, {value}"
                else:
                    headers[name] = value
            break
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self._keep_alive = "keep-alive" in connection
        else:
            self._keep_alive = "close" not in connection
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            response._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            response._decoder = zlib.decompressobj()
        elif encoding != "identity":
            raise _protocol_error(f"unsupported content encoding {encoding!r}")
        transfer = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if status in (204, 304):
            self._framing = _NONE
        elif transfer is not None:
            if transfer.lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise _protocol_error(f"unsupported transfer encoding {transfer!r}")
            self._framing = _CHUNKED
            self._chunk_state = _SIZE
        elif length is not None:
            if not length.isdigit():
                raise _protocol_error("a bad Content-Length")
            self._framing = _LENGTH
            self._remaining = int(length)
        else:
            self._framing = _UNTIL_CLOSE
            self._keep_alive = False
        response.status, response.reason, response.headers = status, reason, headers
        if self._framing == _NONE or (self._framing == _LENGTH and not self._remaining):
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
        buffer = self._buffer
        if buffer:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            state = self._chunk_state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                response._body(bytes(view[pos : pos + take]))
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._chunk_state = _DATA_END
            elif state == _DATA_END:
                if end - pos < 2:
                    buffer += view[pos:]
                    return
                if view[pos : pos + 2] != b"\r\n":
                    raise _protocol_error("a chunk without its CRLF")
                pos += 2
                self._chunk_state = _SIZE
            else:  # _SIZE or _TRAILER: a line
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > _MAX_CHUNK_LINE:
                        raise _protocol_error("a chunk size line is too long")
                    buffer += view[pos:]
                    return
                line = data[pos:eol]
                pos = eol + 2
                if state == _TRAILER:
                    if not line:  # the blank line after the trailers: the end
                        response._finish()
                        if pos < end:
                            self._keep_alive = False
                        return
                    continue
                size = line.split(b";", 1)[0].strip()
                try:
                    self._remaining = int(size, 16)
                except ValueError:
                    raise _protocol_error("a bad chunk size") from None
                if self._remaining < 0:
                    raise _protocol_error("a bad chunk size")
                self._chunk_state = _DATA if self._remaining else _TRAILER


class _StaleConnection(UpstreamError):
    """A reused connection closed before a byte of the answer: send again on a new one."""


class _OriginPool:
    """The connections to one origin: idle ones kept for reuse, at most ``limit`` open."""

    def __init__(self, origin: Origin, limit: int, connect_timeout: float) -> None:
        self.origin = origin
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.loop = asyncio.get_running_loop()
        self.idle: list[Connection] = []
        self.open = 0  # connections open or being opened: the places taken
        self.waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self.closing = False

    async def acquire(self, deadline: float, fresh: bool = False) -> Connection:
        idle = self.idle
        if fresh:
            while idle:
                idle.pop().close()
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
        while self.open >= self.limit:
            conn = await self._wait(deadline)
            if conn is not None:
                return conn
        return await self._connect(deadline)

    async def _wait(self, deadline: float) -> Connection | None:
        """A connection handed over by a call done with it, or None: a place freed."""
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
        self.waiters.append(waiter)
        timer = self.loop.call_at(deadline, _expire, waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed something just as this call gave up: pass it on.
                conn = waiter.result()
                if conn is not None:
                    self._reuse(conn)
                else:
                    self._wake_one(None)
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise
        finally:
            timer.cancel()

    async def _connect(self, deadline: float) -> Connection:
        self.open += 1
        loop = self.loop
        origin = self.origin
        made: list[Connection] = []

        def protocol() -> Connection:
            conn = Connection(self)
            made.append(conn)
            return conn

        remaining = deadline - loop.time()
        try:
            if remaining <= 0:
                raise UpstreamTimeout("the upstream did not answer within the deadline")
            connecting = loop.create_connection(
                protocol,
                origin.host,
                origin.port,
                ssl=origin.ssl,
                server_hostname=origin.host if origin.ssl is not None else None,
            )
            try:
                _, conn = await asyncio.wait_for(connecting, min(self.connect_timeout, remaining))
            except TimeoutError:
                if loop.time() < deadline:
                    raise UpstreamError(
                        "upstream unreachable: connect timed out", code="upstream_unreachable"
                    ) from None
                raise UpstreamTimeout("the upstream did not answer within the deadline") from None
            except OSError as exc:
                raise UpstreamError(
                    f"upstream unreachable: {exc.strerror or exc}", code="upstream_unreachable"
                ) from None
        except BaseException:
            if not made or made[0].counted:  # else connection_lost gave the place back
                if made:
                    made[0].counted = False
                    made[0].close()
                self.open -= 1
                self._wake_one(None)
            raise
        return conn

    def release(self, conn: Connection) -> None:
        """Take back a connection after its call: kept if its response ended cleanly."""
        if conn.finished() and not self.closing:
            conn.reset()
            self._reuse(conn)
            return
        conn.response = None
        conn.close()  # connection_lost frees its place

    def _reuse(self, conn: Connection) -> None:
        conn.reused = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def lost(self, conn: Connection) -> None:
        """A connection closed (either side): its place is free."""
        if not conn.counted:
            return
        conn.counted = False
        if conn in self.idle:
            self.idle.remove(conn)
        self.open -= 1
        self._wake_one(None)

    def _wake_one(self, conn: Connection | None) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return

    def close(self) -> None:
        self.closing = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def _expire(waiter: asyncio.Future[Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(
            UpstreamTimeout("the deadline passed while every connection to the upstream was busy")
        )


class Http1Client:
    """Connection pools per origin; :meth:`request` sends one request and returns its
    response, whose body the caller reads before :meth:`release`."""

    def __init__(self, limit_per_origin: int, connect_timeout: float) -> None:
        self.limit = limit_per_origin
        self.connect_timeout = connect_timeout
        self._pools: dict[tuple[str, int, bool], _OriginPool] = {}

    @staticmethod
    def origin_of(url: str) -> tuple[Origin, str]:
        """The origin of ``url`` and the request target (path and query) to send it."""
        global _default_ssl
        parsed = URL(url)
        context = None
        if parsed.scheme == "https":
            if _default_ssl is None:  # loading the CA certificates takes milliseconds
                _default_ssl = ssl.create_default_context()
            context = _default_ssl
        return Origin(parsed, context), parsed.raw_path_qs or "/"

    def _pool(self, origin: Origin) -> _OriginPool:
        key = (origin.host, origin.port, origin.ssl is not None)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _OriginPool(origin, self.limit, self.connect_timeout)
        return pool

    async def request(
        self, origin: Origin, head: bytes, body: bytes, deadline: float
    ) -> tuple[Connection, Response]:
        """Send ``head`` + ``body`` to ``origin``; the connection (give it back with
        :meth:`release`) and the response, its head read. The deadline bounds the wait
        for a connection, the connect, the head and, until release, every body read."""
        pool = self._pool(origin)
        loop = pool.loop
        fresh = False
        while True:
            conn = await pool.acquire(deadline, fresh)
            timer = conn.timer = loop.call_at(deadline, conn.timed_out)
            try:
                return conn, await conn.request(head, body)
            except _StaleConnection:
                if fresh:  # a new connection never is stale; be safe anyway
                    raise
                fresh = True
            except BaseException:
                timer.cancel()
                conn.response = None
                conn.close()
                raise
            timer.cancel()
            conn.response = None
            conn.close()

    def release(self, conn: Connection) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.pool.release(conn)

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
