"""The front: the protocol of a worker's listening sockets, which answers the hottest
requests itself and gives every other connection to aiohttp.

aiohttp builds a request object, runs routing and the middleware chain and a response
object for every request, which costs more than the answer to a health check. The front
reads each request head itself; a request it knows whole (``GET /healthz``, written
plainly) it answers with pre-built header bytes, in the event loop's call that read it.
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
drains (as :func:`.middleware.close_when_draining`), and the request metrics.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import time
from collections.abc import Callable
from typing import cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from ..config import Config
from ..metrics import Metrics
from ..runtime import WorkerState
from .auth import authenticate
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
        b"content-length",
        b"transfer-encoding",
        b"content-encoding",
        b"expect",
        b"upgrade",
        b"connection",
    )
)

_HEALTHZ_LINE = b"GET /healthz HTTP/1.1"
# The request lines the front knows, so a partial head that can become none of them
# goes to aiohttp at once (aiohttp answers a bad request line without waiting for more).
_HOT_LINES = (_HEALTHZ_LINE,)

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
    ) -> None:
        self.handler = handler  # aiohttp's protocol factory, for the connections handed over
        self.state = state
        self.metrics = metrics
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[FrontConnection] = set()
        self.date = _Date()
        self.closed = False

    def __call__(self) -> FrontConnection:
        return FrontConnection(self)

    def all_spoke(self) -> bool:
        """Whether every connection it holds has sent a request (see the worker's drain)."""
        return all(conn.requests for conn in self.connections)

    def close(self) -> None:
        """The worker drains: close every connection it holds (none is in the middle of
        an answer: the front answers in the call that reads the request). aiohttp closes
        its idle ones the same way."""
        self.closed = True
        for conn in list(self.connections):
            conn.close()


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
    return Front(handler, app[STATE], app[METRICS], config.server.keepalive_timeout)


class FrontConnection(asyncio.Protocol):
    """One client connection, until the front answers all of it or hands it over."""

    __slots__ = (
        "buffer",
        "front",
        "keepalive",
        "next_close",
        "paused",
        "requests",
        "transport",
    )

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.requests = 0
        self.paused = False  # the transport's buffer is full: no answer is written
        self.next_close = 0.0
        self.keepalive: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclasses of asyncio.Transport, but behave as one.
        self.transport = transport = cast(asyncio.Transport, transport)
        front = self.front
        if front.closed:
            transport.close()
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
        if not self.paused:
            self._serve()

    def eof_received(self) -> bool | None:
        return None  # close, as aiohttp's handler does

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self.transport = None

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it does.
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            if self.buffer:
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
        if loop.time() < self.next_close:
            self.keepalive = loop.call_at(self.next_close, self._idle)
            return
        self.close()

    def _serve(self) -> None:
        """Answer every whole hot request at the start of the buffer; hand the connection
        over at the first other one; keep a partial hot head for more bytes."""
        buffer = self.buffer
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        out: list[bytes] = []
        close = False
        while buffer:
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
            if end < 0:
                if len(buffer) >= MAX_HEAD_BYTES or not _may_become_hot(buffer):
                    break  # handed over below
                self.buffer = buffer
                self._write(out, close)
                return
            started = time.perf_counter()
            answer = self._answer(buffer, end)
            if answer is None:
                break
            out.append(answer)
            self.requests += 1
            self.front.metrics.observe_request(
                "/healthz", "GET", 200, time.perf_counter() - started
            )
            buffer = buffer[end + 4 :]
            if self.front.state.draining:
                close = True  # what follows is not read: the connection ends here
                buffer = b""
                break
        else:
            self.buffer = b""
            self._write(out, close)
            return
        self.buffer = b""
        if close:
            self._write(out, close)
            return
        self._write(out, False)
        self._hand_over(buffer)

    def _answer(self, buffer: bytes, end: int) -> bytes | None:
        """The answer to the request whose head ends at ``end``, or None if it is not hot."""
        line_end = buffer.find(b"\r\n", 0, end + 2)
        if buffer[:line_end] != _HEALTHZ_LINE:
            return None
        if not _plain_headers(buffer, line_end + 2, end):
            return None
        before, after = _HEALTHZ_HEAD
        date = self.front.date.now()
        if self.front.state.draining:
            return before + date + after + _CLOSE + b"\r\n" + _HEALTHZ_BODY
        return before + date + after + b"\r\n" + _HEALTHZ_BODY

    def _write(self, out: list[bytes], close: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            front = self.front
            if front.keepalive_timeout > 0:
                self.next_close = asyncio.get_running_loop().time() + front.keepalive_timeout
                if self.keepalive is None:
                    self.keepalive = asyncio.get_running_loop().call_at(self.next_close, self._idle)
        if close:
            self.close()

    def _hand_over(self, data: bytes) -> None:
        """From now on the connection is aiohttp's: a fresh handler gets the transport
        and ``data``, the bytes read from the first request the front did not answer."""
        transport = self.transport
        assert transport is not None
        self._forget()
        self.transport = None
        handler = self.front.handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data:
            handler.data_received(data)


def _plain_headers(buffer: bytes, start: int, end: int) -> bool:
    """Whether the header lines in ``buffer[start:end]`` are all plain and none unusual."""
    if start >= end:
        return True
    lines = buffer[start:end].split(b"\r\n")
    if len(lines) > MAX_HEADERS:
        return False
    for line in lines:
        match = _HEADER_LINE.fullmatch(line)
        if match is None or match.group(1).lower() in _UNUSUAL:
            return False
    return True


def _may_become_hot(partial: bytes) -> bool:
    """Whether an incomplete head may still be a hot request: its request line a prefix
    of a hot one, its complete header lines plain."""
    line_end = partial.find(b"\r\n")
    if line_end < 0:
        return any(hot.startswith(partial) for hot in _HOT_LINES)
    if partial[:line_end] not in _HOT_LINES:
        return False
    last = partial.rfind(b"\r\n")
    return last == line_end or _plain_headers(partial, line_end + 2, last)
