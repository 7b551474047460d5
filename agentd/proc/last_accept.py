"""A draining worker stops accepting without dropping the connections the kernel has
already queued for it.

The kernel completes a TCP handshake before the worker accepts the connection; a client
(a balancer) then sends its request at once. When the last descriptor of a listening
socket closes, Linux resets every connection still queued on it: the client sees its
request answered by a reset, and a balancer does not send a POST it sent once to another
instance (nginx answers 502). The event loop accepts once per turn, so under load a
connection can wait a whole turn in the queue, and a drain used to close the socket over
it.

So the worker keeps a duplicate of each listening socket while the event loop lets go of
its own, then takes in everything queued and closes the duplicate right after finding
the queue empty, with nothing awaited in between: only a connection completed in those
few microseconds can still be reset. The connections taken in are served like any other
(their answers close them: the worker is draining).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence

from aiohttp import web

__all__ = ("stop_accepting",)

log = logging.getLogger(__name__)


def _take_queued(listener: socket.socket) -> list[socket.socket]:
    """Every connection queued on ``listener``, then close it (no await in between)."""
    taken: list[socket.socket] = []
    try:
        listener.setblocking(False)
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. too many open files: the rest is lost
                log.warning("drain: could not take a queued connection: %s", exc)
                break
            taken.append(conn)
    finally:
        listener.close()
    return taken


async def stop_accepting(
    sites: Sequence[web.BaseSite],
    socks: Sequence[socket.socket],
    serve: Callable[[], asyncio.BaseProtocol],
) -> int:
    """Stop the ``sites`` accepting on ``socks`` (the worker's listening sockets), then
    serve with ``serve`` (the sites' protocol factory: the front, or the runner's
    server) the connections that were queued on them. Returns how many there were."""
    spares = [sock.dup() for sock in socks]
    try:
        for site in sites:
            await site.stop()
    except BaseException:
        for spare in spares:
            spare.close()
        raise
    taken = [conn for spare in spares for conn in _take_queued(spare)]
    loop = asyncio.get_running_loop()
    for conn in taken:
        conn.setblocking(False)
        try:
            await loop.connect_accepted_socket(serve, conn)
        except OSError as exc:  # the client is already gone
            log.debug("drain: a queued connection closed before it was served: %s", exc)
            with contextlib.suppress(OSError):
                conn.close()
    if taken:
        log.info("drain: took in %d connection(s) queued at the close", len(taken))
    return len(taken)
