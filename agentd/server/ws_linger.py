"""Lingering close (nginx's ``lingering_close``): how a WebSocket the client is still
sending on is closed, so that the client reads the close frame.

A socket closed with unread bytes in its receive buffer, or reached by more after it
closed, answers with a reset: the client's sending fails, and its WebSocket library
then gives up on the connection (a 1006) before it reads the close frame already in
its receive queue. That happens when the server closes because of the client's input,
above all a frame over the limit, refused from its header while its payload still
arrives. So there the server shuts down its sending side after the close frame (the
client reads it, then the end of the stream), and reads and drops what the client
still sends until the client closes too, for at most :data:`LINGER_S` seconds and
:data:`LINGER_BYTES` bytes; past either bound it drops the connection (a client that
never stops sending holds nothing for long). One timer per lingering connection, no
task.
"""

from __future__ import annotations

import asyncio

__all__ = ("LINGER_BYTES", "LINGER_S", "linger")

LINGER_S = 2.0
# As much as the largest frame a worker may accept (``websocket.max_frame_bytes``).
LINGER_BYTES = 64 * 1024 * 1024


class _Linger(asyncio.Protocol):
    """The transport's protocol while it lingers: drops what it reads, closes at the end
    of the client's stream, drops the connection past the bounds."""

    __slots__ = ("left", "timer", "transport")

    def __init__(self, transport: asyncio.Transport, timer: asyncio.TimerHandle) -> None:
        self.transport = transport
        self.timer = timer
        self.left = LINGER_BYTES

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # the client closed too: close (nothing is left unread)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.timer.cancel()


def linger(transport: asyncio.Transport) -> None:
    """Close ``transport`` lingering, once what was written to it is sent; it is no
    longer the caller's protocol's (which hears nothing more from it)."""
    if transport.is_closing():
        return
    loop = asyncio.get_running_loop()
    lingering = _Linger(transport, loop.call_later(LINGER_S, transport.abort))
    transport.set_protocol(lingering)
    if transport.can_write_eof():  # (TLS cannot: there the bounds end it)
        transport.write_eof()
    if not transport.is_reading():  # the connection had paused reading
        transport.resume_reading()
