"""Connections the server closed while they were idle: found before use, never used.

A Redis server closes a client's connection on its own: its ``timeout`` config (an idle
connection), ``CLIENT KILL``, a restart. The connection sits in its pool meanwhile, and a
command sent on it fails (``Connection closed by server``): one 503 per such connection
for a caller who did nothing wrong. So every connection is checked when it is taken from
its pool, and one the server closed (or one with bytes left unread) is closed and opened
again first, as a new connection would be: nothing was sent on it, so this costs no retry
and risks no command running twice. The check reads the connection's own state (the
event loop has already seen the server's FIN): no round trip, no system call.

- **Pools** (plain shards, Sentinel groups, replicas): redis-py's checkout makes this
  check, but skips it when the pool expects maintenance notifications (RESP3, redis-py's
  default, where a push may sit unread on an idle connection). Those notifications are
  Redis Enterprise's and Redis Cloud's (``CLIENT MAINT_NOTIFICATIONS``), which the servers
  agentd supports never send (a server that does not know the command is only asked in
  vain on every new connection): agentd's pools turn them off (:data:`POOL_OPTIONS`), and
  redis-py's own check runs again. A Sentinel group's pool already had them off (redis-py
  cannot name its endpoint), so its check always ran.
- **Cluster nodes**: redis-py's cluster client takes a node's free connection with no
  check at all, whatever the protocol. :func:`checked` is that check, applied where a
  node hands out a free connection (see :mod:`.asking`).

What no check can see: a server that closes the connection in the same instant the
command is sent (the FIN still on its way). A read is then sent once more
(:func:`.shards.once_more_if_broken`); a write fails with the 503 of any call whose
connection broke under it, as its effect may have been applied before the connection
broke (docs/operations.md, "Connections the server closed").
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.maint_notifications import MaintNotificationsConfig

__all__ = ("POOL_OPTIONS", "checked", "stale")

# Options of every redis-py client agentd makes (see the module's docstring).
POOL_OPTIONS: dict[str, Any] = {
    "maint_notifications_config": MaintNotificationsConfig(enabled=False),
}


def stale(conn: AbstractConnection) -> bool:
    """Whether ``conn``, connected and idle, cannot be used as it is: the server closed it
    (or reset it), or a reply was left unread on it (a caller cancelled mid-call)."""
    reader: Any = conn._reader
    writer: Any = conn._writer
    if reader is None or writer is None:
        return False  # not connected: it connects when used
    if reader.at_eof() or reader.exception() is not None or writer.transport.is_closing():
        return True
    if reader._buffer:  # bytes the event loop received that nobody read
        return True
    parser: Any = conn._parser
    hiredis_reader = getattr(parser, "_reader", None)
    if hiredis_reader is not None and hasattr(hiredis_reader, "has_data"):
        return bool(hiredis_reader.has_data())
    return bool(getattr(parser, "_buffer", None))


def checked(conn: AbstractConnection) -> AbstractConnection:
    """``conn``, closed first if it is :func:`stale`: the command then opens it again.

    Synchronous (a node hands out connections synchronously): the close is redis-py's own
    close outside a task (``disconnect`` with no running task), which does not wait."""
    if stale(conn):
        conn._parser.on_disconnect()
        conn.reset_should_reconnect()
        conn._close()
    return conn
