"""A lean HTTP/1.1 client for upstream model calls, on an asyncio protocol.

aiohttp's client spends most of a loopback call in its own machinery (request and
response objects, tracing hooks, the connector's bookkeeping, a timer per read); this one
writes the request in one ``write`` and parses the response as it arrives, with one timer
per connection for the calls' deadlines.

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

This module holds the pools and the request API; one connection, the response parsing
and :class:`Response` are in :mod:`.http1_connection`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ssl
from typing import Final

from yarl import URL

from ..errors import UpstreamError, UpstreamTimeout
from .http1_connection import Connection, StaleConnection
from .http1_response import Response

__all__ = ("Http1Client", "Origin", "Response")

# A connection idle longer than this is closed rather than reused (servers close theirs
# after 5-75 s; reusing one at that moment races their close).
KEEPALIVE_S: Final = 15.0

_default_ssl: ssl.SSLContext | None = None


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

    def release(self, conn: Connection, ended: bool = False) -> None:
        """Take back a connection after its call: kept if its response ended cleanly, or
        (``ended``: the caller read all the reply says, its last bytes are on their way)
        once it does."""
        if conn.finished() and not self.closing:
            conn.reset()
            self._reuse(conn)
            return
        if ended and not self.closing and conn.drain():
            return  # given back again at the end of its body
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
        if deadline <= pool.loop.time():
            raise UpstreamTimeout("the deadline passed before the upstream call")
        fresh = False
        while True:
            conn = await pool.acquire(deadline, fresh)
            conn.arm(deadline)
            try:
                return conn, await conn.request(head, body)
            except StaleConnection:
                if fresh:  # a new connection never is stale; be safe anyway
                    raise
                fresh = True
            except BaseException:
                conn.response = None
                conn.close()
                raise
            conn.response = None
            conn.close()

    def release(self, conn: Connection, ended: bool = False) -> None:
        """Give back a connection after its call (see :meth:`_OriginPool.release`)."""
        conn.pool.release(conn, ended)

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
