"""A draining worker serves the connections queued on its listening socket when it stops
accepting (agentd/proc/last_accept.py), instead of resetting them with the socket: a
balancer that sent a POST on one would answer 502. Real sockets, a real aiohttp server."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from agentd.proc.last_accept import stop_accepting

# Connection: close, so that the answer ends with the connection.
REQUEST = b"POST /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"


async def _hello(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="hello")


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _answer(conn: socket.socket) -> bytes:
    """What the server sent on ``conn`` until it closed it (b"" if it reset it)."""
    conn.settimeout(30)
    out = b""
    try:
        while chunk := conn.recv(65536):
            out += chunk
    except ConnectionResetError:
        return b""
    return out


async def _queue_then_stop(take_in: bool) -> list[bytes]:
    app = web.Application()
    app.router.add_post("/hello", _hello)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = _listener()
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    # Connected and sent while the event loop does not turn: the kernel completes each
    # handshake and queues the connection, which the server has not accepted yet.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    for client in clients:
        client.sendall(REQUEST)
    if take_in:
        assert runner.server is not None
        assert await stop_accepting([site], [sock], runner.server) == 3
    else:
        await site.stop()  # what a drain did before: the queue goes with the socket
    answers = await asyncio.gather(*(asyncio.to_thread(_answer, c) for c in clients))
    await runner.cleanup()
    for client in clients:
        client.close()
    return answers


async def test_connections_queued_at_the_close_are_served() -> None:
    for answer in await _queue_then_stop(take_in=True):
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer
        assert answer.endswith(b"hello")


async def test_closing_the_socket_alone_resets_them() -> None:
    # The failure the drain avoids, shown on the same set-up: every queued request is
    # answered by a reset (no byte of an answer).
    assert await _queue_then_stop(take_in=False) == [b"", b"", b""]
