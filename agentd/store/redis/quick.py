"""Script calls on a plain shard's pool without redis-py's per-command layers.

redis-py's command path pays, for every call: a checkout from the blocking pool under
its condition and a timeout, the send in a task of its own (``asyncio.wait_for``), a
second timeout around the read, the command packed in Python, observability hooks and
an event on the release. A session turn is two script calls, and those layers were most
of the client's CPU per turn (bench/README.md, ``bench.turn_client_cpu``).

:class:`QuickCalls` makes the same call on the same pool and connections, with less:

- an idle, connected, clean connection is taken from the pool as it is; otherwise (none
  idle, the pool at its limit, a connection to open or found dirty) redis-py's own
  checkout runs, with its wait bounded by ``redis.timeout`` (so the pool's limit holds);
- the command is packed by hiredis;
- one ``asyncio.timeout`` of ``redis.timeout`` bounds the write and the read together, so
  a hung server still fails the call within the timeout;
- a failure of any kind drops the connection (as redis-py does), and raises what redis-py
  raises: ``TimeoutError``, ``ConnectionError``, the server's error reply.

Only for pools redis-py's plain ``BlockingConnectionPool`` with the hiredis parser (the
shards of ``redis://`` and ``rediss://`` URLs): Sentinel groups and clusters keep
redis-py's path, which finds their masters and follows their redirections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool, DefaultParser

__all__ = ("Orphan", "QuickCalls", "quick_calls")

# Bytes read from the socket at a time (redis-py's own read size).
READ_SIZE = 65536

SERVER_CLOSED = "Connection closed by server."

# hiredis's type of RESP3 push messages (hiredis >= 3.2).
PUSH: type | None = getattr(hiredis, "PushNotification", None)

# Called with the reply of a call whose caller was cancelled (see QuickCalls.execute).
Orphan = Callable[[Any], None]


def quick_calls(client: aioredis.Redis) -> QuickCalls | None:
    """The quick path over ``client``'s pool, or None where redis-py's must be used."""
    pool = client.connection_pool
    if type(pool) is not BlockingConnectionPool:
        return None
    if pool.connection_kwargs.get("parser_class", DefaultParser) is not _AsyncHiredisParser:
        return None
    if not issubclass(pool.connection_class, AbstractConnection):
        return None
    # The pool's private state this reads and writes: a redis-py that renamed it gets
    # redis-py's path (tests/test_store_quick.py fails, so the loss is seen).
    needed = ("_available_connections", "_in_use_connections", "_condition")
    if not all(hasattr(pool, name) for name in needed):
        return None
    return QuickCalls(pool)


class QuickCalls:
    """Commands on one shard's ``BlockingConnectionPool`` (see the module's docstring)."""

    def __init__(self, pool: BlockingConnectionPool) -> None:
        self.pool = pool
        self.timeout: float | None = pool.connection_kwargs.get("socket_timeout")
        # Each checkout's path, for tests: the quick one, or redis-py's.
        self.quick = 0
        self.slow = 0
        # Replies handed over after their caller was cancelled (see ``execute``).
        self._finishing: set[asyncio.Task[Any]] = set()

    def _take(self) -> AbstractConnection | None:
        """An idle connection ready for a command, or None (then redis-py's checkout)."""
        idle = self.pool._available_connections
        if not idle:
            return None
        conn = idle[-1]  # the one redis-py's checkout would take
        if not _ready(conn):
            return None  # to redis-py's checkout, which connects it
        idle.pop()
        self.pool._in_use_connections.add(conn)
        return conn

    async def _give_back(self, conn: AbstractConnection) -> None:
        pool = self.pool
        if pool._condition._waiters or conn.should_reconnect():  # type: ignore[attr-defined]
            await pool.release(conn)  # wakes a waiting checkout, under the pool's condition
            return
        pool._in_use_connections.remove(conn)
        pool._available_connections.append(conn)

    async def execute(self, command: tuple[Any, ...], orphan: Orphan | None = None) -> Any:
        """Send ``command`` (str, bytes, int and float arguments) and return its reply.
        ``orphan``: called with the reply of a call whose caller was cancelled after the
        command was sent (read to its end in the background, within the timeout), so
        that what the command granted can be let go."""
        packed = hiredis.pack_command(command)
        conn = self._take()
        if conn is None:
            self.slow += 1
            conn = await self.pool.get_connection()
            if not _ready(conn):
                # redis-py's checkout checks this too, but only on a pool with maintenance
                # notifications off (agentd's are, see idle.py): kept for any other.
                await self._reconnect(conn)
        else:
            self.quick += 1
        sent = False
        try:
            async with asyncio.timeout(self.timeout):
                conn._writer.write(packed)
                sent = True
                reply = await _read(conn)
        except asyncio.CancelledError:
            if orphan is not None and sent:
                self._finish(conn, orphan)
            else:
                await self._drop(conn)
            raise
        except TimeoutError:
            await self._drop(conn)
            raise rexc.TimeoutError(f"Timeout reading from {conn._host_error()}") from None
        except OSError as exc:
            await self._drop(conn)
            raise rexc.ConnectionError(
                f"Error while reading from {conn._host_error()} : {exc.args}"
            ) from exc
        except BaseException:
            await self._drop(conn)
            raise
        await self._give_back(conn)
        if isinstance(reply, rexc.ResponseError):
            raise reply
        return reply

    async def _reconnect(self, conn: AbstractConnection) -> None:
        try:
            await conn.disconnect(nowait=True)
            await conn.connect()
        except BaseException:
            await self.pool.release(conn)
            raise
        if not isinstance(conn._parser, _AsyncHiredisParser):  # not one of this pool's
            await self.pool.release(conn)
            raise rexc.ConnectionError("the shard's connection has no hiredis parser")

    async def _drop(self, conn: AbstractConnection) -> None:
        """A connection that failed mid-call: closed (what was unread is lost with it),
        and back in the pool, which connects it again when it is next taken."""
        try:
            await conn.disconnect(nowait=True)
        finally:
            await self.pool.release(conn)

    def _finish(self, conn: AbstractConnection, orphan: Orphan) -> None:
        """Read the reply of a cancelled caller's call, and hand it to ``orphan``."""

        async def finish() -> None:
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await _read(conn)
            except BaseException:
                await self._drop(conn)
                return
            await self._give_back(conn)
            if not isinstance(reply, rexc.ResponseError):
                orphan(reply)

        task = asyncio.ensure_future(finish())
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)


def _ready(conn: AbstractConnection) -> bool:
    """Whether ``conn`` is connected and clean (nothing unread, no EOF): what redis-py's
    checkout checks before it hands out a connection."""
    reader = conn._reader
    parser = conn._parser
    return not (
        reader is None
        or conn._writer is None
        or reader._buffer
        or reader.at_eof()
        or not isinstance(parser, _AsyncHiredisParser)
        or not parser._connected
        or parser._reader.has_data()
    )


async def _read(conn: AbstractConnection) -> Any:
    """One reply off ``conn``, as the hiredis parser reads it: push messages (RESP3)
    handed to the parser's handlers on the way."""
    parser: Any = conn._parser
    reader = parser._reader
    while True:
        reply = reader.gets()
        while reply is NOT_ENOUGH_DATA:
            data = await conn._reader.read(READ_SIZE)  # type: ignore[union-attr]
            if not data:
                raise rexc.ConnectionError(SERVER_CLOSED)
            reader.feed(data)
            reply = reader.gets()
        if PUSH is None or not isinstance(reply, PUSH):
            break
        await parser.handle_push_response(reply)
    if isinstance(reply, rexc.ConnectionError):
        raise reply
    if isinstance(reply, list) and reply and isinstance(reply[0], rexc.ConnectionError):
        raise reply[0]
    return reply
