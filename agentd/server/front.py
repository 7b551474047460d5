"""The front: the protocol of a worker's listening sockets, which answers the hottest
requests itself and gives every other connection to aiohttp.

aiohttp builds a request object, runs routing and the middleware chain and a response
object for every request, which costs more than the answer to a health check or a
cached chat reply. The front reads each request head itself; a request it knows whole,
written plainly, it answers in the event loop's call that read it: ``GET /healthz``
with pre-built bytes, ``POST /v1/chat/completions`` by the route's own steps
(:mod:`.front_chat`; an answer that suspends, a cache miss, goes on in a task while
the connection waits for it), and a streamed one (a body with ``"stream"``) written
chunk by chunk as the turn produces it (:mod:`.front_stream`, which waits on
:meth:`FrontConnection.drained` while the client does not read).
At the first request it does not know, or anything unusual (another route, a query
string, a body on a GET, ``Transfer-Encoding``, ``Expect``, ``Connection``, a byte
outside printable ASCII, a head over :data:`MAX_HEAD_BYTES`), it hands the connection to
a fresh aiohttp ``RequestHandler`` with the bytes read from that request on, and from
then on the connection is aiohttp's, which answers it exactly as without a front (its
own errors for hostile input included). So the front only has to be right about what it
accepts, and it accepts little.

What a connection the front still holds gets from aiohttp's handler, it does itself: the
keep-alive timeout (an idle connection, or one sending a head too slowly, is closed after
``server.keepalive_timeout``), back-pressure (a client that does not read its answers
stops being read), ``Connection: close`` on every answer once the worker leaves or
drains (as :func:`.middleware.close_when_draining`), and the request metrics. When the
worker drains, every connection it holds goes to aiohttp, whose shutdown ends it.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import re
import socket
import time
from collections.abc import Callable, Collection
from typing import cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from ..aio import start
from ..config import Config
from ..metrics import Metrics
from ..runtime import WorkerState
from .auth import authenticate
from .front_chat import ROUTE as CHAT_ROUTE
from .front_chat import Answer, HotChat, status_line
from .front_stream import STREAM_MARK, HotStream
from .keys import CONFIG, METRICS, STATE
from .middleware import close_when_draining, observe

__all__ = ("MAX_HEAD_BYTES", "Front", "FrontConnection", "front_for")

# A request head longer than this goes to aiohttp (whose limits answer it): the hot
# requests are far shorter.
MAX_HEAD_BYTES = 8192
# As many header lines; more go to aiohttp (whose limit is 128).
MAX_HEADERS = 64

# A header line the front takes: an RFC 9110 token, a colon, and a value of printable
# ASCII (no obs-text, no bare CR or LF, no obs-fold); anything else is aiohttp's to judge.
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e][\t\x20-\x7e]*)?)")
# Headers that make a request unusual: the front hands it over when it carries one.
_UNUSUAL = frozenset(
    (
        b"transfer-encoding",
        b"content-encoding",
        b"expect",
        b"upgrade",
        b"connection",
        b"x-session-id",
        b"sec-websocket-key1",
    )
)
# Headers kept, each at most once or the request is aiohttp's: those the front reads,
# and those aiohttp refuses twice (its parser's singletons: 400 when repeated).
_KEPT = frozenset(
    (
        b"authorization",
        b"content-length",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"user-agent",
    )
)
# The longest Content-Length the front reads (larger: aiohttp's 413).
_MAX_LENGTH_DIGITS = 10
# Bytes a connection may send behind a request whose answer is still being worked out
# before the front stops reading it (aiohttp stops at 32 requests).
_MAX_HELD = 1024 * 1024

# A client sends the same header lines request after request: the lines of the last
# header blocks seen, and what the front found in them, are kept (the oldest goes
# first), so a block is read once: at most this many, of at most MAX_HEAD_BYTES each.
_HEAD_MEMO_ENTRIES = 256

_HEALTHZ_LINE = b"GET /healthz HTTP/1.1"
_CHAT_LINE = b"POST /v1/chat/completions HTTP/1.1"
# The request lines the front knows, so a partial head that can become none of them
# goes to aiohttp at once (aiohttp answers a bad request line without waiting for more).
_HOT_LINES = (_HEALTHZ_LINE, _CHAT_LINE)

_HEALTHZ_BODY = b'{"status":"ok"}'
_SERVER = SERVER_SOFTWARE.encode()


def _head(status: bytes, content_type: bytes, length: int) -> tuple[bytes, bytes]:
    """The bytes of an answer's head before and after its Date value, in aiohttp's order."""
    before = (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
        + b"\r\nContent-Length: " + str(length).encode() + b"\r\nDate: "
    )  # fmt: skip
    return before, b"\r\nServer: " + _SERVER + b"\r\n"


_HEALTHZ_HEAD = _head(b"200 OK", b"application/json", len(_HEALTHZ_BODY))
_CLOSE = b"Connection: close\r\n"
_AFTER_DATE = b"\r\nServer: " + _SERVER + b"\r\n"
_OK = status_line(200)


class _Date:
    """The ``Date`` header's value, formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.value = email.utils.formatdate(second, usegmt=True).encode()
        return self.value


class Front:
    """One worker's front: the protocol factory of its listening sockets, and the
    connections it still holds."""

    def __init__(
        self,
        handler: Callable[[], asyncio.Protocol],
        state: WorkerState,
        metrics: Metrics,
        keepalive_timeout: float,
        chat: HotChat | None = None,
    ) -> None:
        self.handler = handler  # aiohttp's protocol factory, for the connections handed over
        self.state = state
        self.metrics = metrics
        self.keepalive_timeout = keepalive_timeout
        self.chat = chat
        self.streams = HotStream(chat) if chat is not None else None
        self.connections: set[FrontConnection] = set()
        # Answers that suspended (a cache miss, a limit checked in the store).
        # An int: a stream's status, its bytes written (:mod:`.front_stream`).
        self.pending: set[asyncio.Task[Answer | int]] = set()
        self.date = _Date()
        self.closed = False
        # Header blocks -> what _read_headers found in them (None: not the front's).
        self.heads: dict[bytes, dict[bytes, bytes] | None] = {}

    def __call__(self) -> FrontConnection:
        return FrontConnection(self)

    def close(self) -> None:
        """The worker drains: every connection it holds becomes aiohttp's (with the bytes
        of a request not yet whole), so aiohttp's shutdown treats each as it treats its
        own: one that has not spoken yet gets its moment, idle ones are closed. One
        waiting for an answer closes after it (the answer says so)."""
        self.closed = True
        for conn in list(self.connections):
            if conn.busy is None and conn.transport is not None:
                conn.give_away()

    async def finish(self, limit_s: float) -> None:
        """Wait up to ``limit_s`` for the answers still running, then cancel them."""
        if self.pending:
            _, late = await asyncio.wait(set(self.pending), timeout=limit_s)
            for task in late:
                task.cancel()


def front_for(app: web.Application, handler: Callable[[], asyncio.Protocol]) -> Front | None:
    """The front for a started ``app`` whose connections aiohttp's ``handler`` (the
    runner's server) serves, or None when it must not answer anything itself: turned off
    (``server.front``), the access log on (aiohttp writes it, for every request), or a
    plugin that added a middleware or a response hook the front would skip."""
    config: Config = app[CONFIG]
    if not config.server.front or config.log.access:
        return None
    if list(app.middlewares) != [observe, authenticate]:
        return None
    if list(app.on_response_prepare) != [close_when_draining]:
        return None
    return Front(handler, app[STATE], app[METRICS], config.server.keepalive_timeout, HotChat(app))


class FrontConnection(asyncio.Protocol):
    """One client connection, until the front answers all of it or hands it over."""

    __slots__ = (
        "buffer",
        "busy",
        "front",
        "held",
        "keepalive",
        "loop",
        "next_close",
        "paused",
        "receiving",
        "requests",
        "transport",
        "waiter",
    )

    def __init__(self, front: Front) -> None:
        self.front = front
        self.loop = asyncio.get_running_loop()  # (each look-up of the running loop is a getpid)
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.requests = 0
        self.paused = False  # the transport's buffer is full: no answer is written
        self.busy: asyncio.Task[Answer | int] | None = None  # the answer being worked out
        # A stream waiting for the client to read (see drained).
        self.waiter: asyncio.Future[None] | None = None
        # Reading stopped while ``busy``: what came after the request filled the buffer.
        self.held = False
        # A request's body is on its way since this perf_counter time (0.0: none): not
        # idle (aiohttp's keep-alive timer does not close a connection in the middle of a
        # request either), and a 499 if the client leaves before the body is whole.
        self.receiving = 0.0
        self.next_close = 0.0
        self.keepalive: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclasses of asyncio.Transport, but behave as one.
        self.transport = transport = cast(asyncio.Transport, transport)
        front = self.front
        if front.closed:  # the worker drains: aiohttp's shutdown decides
            self._hand_over(b"")
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # What aiohttp's handler sets on its connections.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        front.connections.add(self)
        if front.keepalive_timeout > 0:
            # As aiohttp: a connection that never sends a request is closed too.
            loop = asyncio.get_running_loop()
            self.next_close = loop.time() + front.keepalive_timeout
            self.keepalive = loop.call_at(self.next_close, self._idle)

    def data_received(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        if self.busy is not None:
            # Pipelined behind an answer that suspended: keep it, within a bound.
            if not self.held and len(self.buffer) > _MAX_HELD and self.transport is not None:
                self.held = True
                self.transport.pause_reading()
        elif not self.paused:
            self._serve()

    def eof_received(self) -> bool | None:
        return None  # close, as aiohttp's handler does

    def connection_lost(self, exc: Exception | None) -> None:
        if self.receiving:
            # As aiohttp's middleware counts a body cut short.
            elapsed = time.perf_counter() - self.receiving
            self.front.metrics.observe_request(CHAT_ROUTE, "POST", 499, elapsed)
            self.receiving = 0.0
        self._forget()
        self.transport = None
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the stream"))

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it does.
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.transport is not None and not self.transport.is_closing() and not self.held:
            self.transport.resume_reading()
            if self.buffer and self.busy is None:
                self._serve()

    # -- serving ----------------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._forget()

    def _forget(self) -> None:
        self.front.connections.discard(self)
        if self.keepalive is not None:
            self.keepalive.cancel()
            self.keepalive = None

    def _idle(self) -> None:
        """The keep-alive timer: close the connection if nothing came in time."""
        self.keepalive = None
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        if self.busy is not None or self.receiving:
            self.next_close = loop.time() + self.front.keepalive_timeout
        if loop.time() < self.next_close:
            self.keepalive = loop.call_at(self.next_close, self._idle)
            return
        self.close()

    def _serve(self) -> None:
        """Answer every whole hot request at the start of the buffer; hand the connection
        over at the first other one; keep a partial hot request for more bytes."""
        buffer = self.buffer
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        front = self.front
        out: list[bytes] = []
        while buffer:
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
            if end < 0:
                if len(buffer) >= MAX_HEAD_BYTES or not _may_become_hot(buffer):
                    break  # handed over below
                return self._wait(buffer, out)
            started = time.perf_counter()
            line_end = buffer.find(b"\r\n", 0, end + 2)
            line = buffer[:line_end]
            block = buffer[line_end + 2 : end]
            heads = front.heads
            try:
                headers = heads[block]
            except KeyError:
                headers = _read_headers(block, 0, len(block))
                if len(heads) >= _HEAD_MEMO_ENTRIES:
                    del heads[next(iter(heads))]
                heads[block] = headers
            if headers is None:
                break
            if line == _HEALTHZ_LINE:
                if b"content-length" in headers:
                    break
                answer: Answer = (200, [], _HEALTHZ_BODY)
                route, method, size = "/healthz", "GET", end + 4
            elif line == _CHAT_LINE and front.chat is not None:
                length = headers.get(b"content-length")
                if length is None or not length.isdigit() or len(length) > _MAX_LENGTH_DIGITS:
                    break
                if int(length) > front.chat.max_body:
                    break
                size = end + 4 + int(length)
                if len(buffer) < size:
                    self.receiving = self.receiving or started
                    return self._wait(buffer, out)
                self.receiving = 0.0
                raw = buffer[end + 4 : size]
                # (find, not `in`: Python 3.11 tries the needle as an int first, and
                # formats the TypeError.)
                if raw.find(STREAM_MARK) >= 0 and front.streams is not None:
                    # A stream is written as it comes: the answers before it go first.
                    self._write(out)
                    out = []
                    coro = front.streams.begin(raw, headers.get(b"authorization"), self)
                else:
                    coro = front.chat.begin(raw, headers.get(b"authorization"))
                if coro is None:
                    break
                result = start(coro)
                if isinstance(result, asyncio.Task):
                    # It suspended: the connection waits for it, with what follows.
                    self.busy = result
                    front.pending.add(result)
                    result.add_done_callback(functools.partial(self._finished, started, size))
                    return self._wait(buffer, out)
                if result is None:
                    break
                answer, route, method = result, CHAT_ROUTE, "POST"
            else:
                break
            closing = front.state.draining
            if type(answer) is int:  # a stream, written
                status = answer
            else:
                out.append(self._render(answer, closing))
                status = answer[0]
            self.requests += 1
            front.metrics.observe_request(route, method, status, time.perf_counter() - started)
            buffer = buffer[size:]
            if closing or transport.is_closing():  # (a stream the client left, or cut short)
                # What follows is not read: the answer said the connection ends.
                self.buffer = b""
                self._write(out)
                return self.close()
        else:
            return self._wait(b"", out)
        self.buffer = b""
        self._write(out)
        self._hand_over(buffer)

    def _wait(self, buffer: bytes, out: list[bytes]) -> None:
        """Keep ``buffer`` (a request not yet whole, or waiting for its answer) and send
        the answers so far."""
        self.buffer = buffer
        self._write(out)

    def _finished(self, started: float, size: int, task: asyncio.Task[Answer | int]) -> None:
        """An answer that suspended is ready: send it, then go on with what followed."""
        self.busy = None
        front = self.front
        front.pending.discard(task)
        transport = self.transport
        if self.held:
            self.held = False
            if transport is not None and not self.paused:
                transport.resume_reading()
        if task.cancelled():
            self.close()
            return
        answer = task.result()
        if transport is None or transport.is_closing():
            # The client left first: counted as aiohttp's middleware counts it.
            status = 499 if answer is not None else 0
            if type(answer) is int:
                status = answer  # a stream: 200 if it ended before the client left
            if status:
                front.metrics.observe_request(
                    CHAT_ROUTE, "POST", status, time.perf_counter() - started
                )
            return
        if answer is None:
            buffer, self.buffer = self.buffer, b""
            self._hand_over(buffer)
            return
        closing = front.state.draining or front.closed
        if type(answer) is int:  # a stream, written
            status = answer
        else:
            self._write([self._render(answer, closing)])
            status = answer[0]
        self.requests += 1
        front.metrics.observe_request(CHAT_ROUTE, "POST", status, time.perf_counter() - started)
        self.buffer = self.buffer[size:]
        if closing:
            self.close()
        elif self.buffer and not self.paused:
            self._serve()

    def _render(
        self, answer: tuple[int, Collection[tuple[str, str]] | bytes, bytes], close: bool
    ) -> bytes:
        """An answer's bytes, with its headers (or their lines) in aiohttp's order."""
        status, headers, body = answer
        date = self.front.date.now()
        if body is _HEALTHZ_BODY:
            before, after = _HEALTHZ_HEAD
            return before + date + after + (_CLOSE if close else b"") + b"\r\n" + body
        if type(headers) is not bytes:
            headers = "".join([f"{name}: {value}\r\n" for name, value in headers]).encode()
        return b"".join(
            (
                _OK if status == 200 else status_line(status),
                b"\r\n",
                headers,
                b"Content-Type: application/json\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\nDate: ",
                date,
                _AFTER_DATE,
                _CLOSE if close else b"",
                b"\r\n",
                body,
            )
        )

    def _write(self, out: list[bytes]) -> None:
        transport = self.transport
        if transport is None or not out:
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        front = self.front
        if front.keepalive_timeout > 0:
            loop = self.loop
            self.next_close = loop.time() + front.keepalive_timeout
            if self.keepalive is None:
                self.keepalive = loop.call_at(self.next_close, self._idle)

    def send(self, data: bytes) -> None:
        """Write ``data`` now (the end of a stream), as an answer is written."""
        self._write([data])

    def dated(self) -> bytes:
        """A head's last lines but the blank one: ``Date``, ``Server``, and ``Connection:
        close`` while the worker drains (as :func:`.middleware.close_when_draining`)."""
        close = _CLOSE if self.front.state.draining else b""
        return b"Date: " + self.front.date.now() + _AFTER_DATE + close

    async def drained(self) -> None:
        """Wait until the client reads again (the transport's buffer drained below its
        low-water mark); ConnectionResetError if it leaves first."""
        if self.waiter is None:
            self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter

    def give_away(self) -> None:
        """Hand the connection over as it is (see :meth:`Front.close`)."""
        buffer, self.buffer = self.buffer, b""
        self._hand_over(buffer)

    def _hand_over(self, data: bytes) -> None:
        """From now on the connection is aiohttp's: a fresh handler gets the transport
        and ``data``, the bytes read from the first request the front did not answer."""
        transport = self.transport
        assert transport is not None
        self._forget()
        self.transport = None
        self.receiving = 0.0  # aiohttp reads (and counts) that request from here
        handler = self.front.handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.paused:
            # The transport's buffer is still full: aiohttp's handler waits for it as it
            # would have, and reads again (the front stopped reading while it waited).
            handler.pause_writing()
            transport.resume_reading()
        if data:
            handler.data_received(data)


def _read_headers(
    buffer: bytes, start: int, end: int, whole: bool = True
) -> dict[bytes, bytes] | None:
    """The headers the front keeps among the lines in ``buffer[start:end]``, or None if
    any line is not plain, a header is unusual, one it keeps comes twice, or (``whole``:
    these are all the request's headers) there is no ``Host`` (aiohttp's 400 in HTTP/1.1)."""
    found: dict[bytes, bytes] = {}
    if start >= end:
        return None if whole else found
    lines = buffer[start:end].split(b"\r\n")
    if len(lines) > MAX_HEADERS:
        return None
    for line in lines:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            return None
        name = match.group(1).lower()
        if name in _KEPT:
            if name in found:
                return None
            found[name] = match.group(2).rstrip(b" \t")
        elif name in _UNUSUAL:
            return None
    return found if b"host" in found or not whole else None


def _may_become_hot(partial: bytes) -> bool:
    """Whether an incomplete head may still be a hot request: its request line a prefix
    of a hot one, its complete header lines plain."""
    line_end = partial.find(b"\r\n")
    if line_end < 0:
        return any(hot.startswith(partial) for hot in _HOT_LINES)
    if partial[:line_end] not in _HOT_LINES:
        return False
    last = partial.rfind(b"\r\n")
    return last == line_end or _read_headers(partial, line_end + 2, last, whole=False) is not None
