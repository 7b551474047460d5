"""A WebSocket client that stops reading: its send queue fills, it is closed with 1013
(resume with hello after), the worker serves on, and the close is counted in /metrics."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import struct

import aiohttp
import orjson

from .chat_helpers import Factory, chat_body, echo, post
from .waiting import wait_until


def _masked_text(payload: bytes) -> bytes:
    """One client-to-server text frame (clients must mask, RFC 6455 §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 1 << 16:
        length = bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", n)
    head = bytes([0x81]) + length
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def silent_client(host: str, port: int) -> socket.socket:
    """A raw WebSocket client with a tiny receive buffer that asks for the upgrade and
    never reads: the server's writes back up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    return sock


TURNS = 8


async def _overflows(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    found = re.search(r"^agentd_websocket_send_overflows_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_a_client_that_stops_reading_is_closed_with_1013_and_counted(
    serve: Factory,
) -> None:
    url = await serve(
        **echo(tokens_per_s=0.0), websocket={"send_queue": 4, "max_inflight_turns": TURNS}
    )
    host, port = url.removeprefix("http://").split(":")
    sock = await silent_client(host, int(port))
    loop = asyncio.get_running_loop()
    # Frames wait in the queue only once the transport is full: the replies (8 turns of
    # 20,000 delta frames, about 8 MB) must outgrow what the kernel buffers (up to
    # tcp_wmem's maximum, 4 MiB by default) on top of the transport's own buffer.
    words = " ".join(f"w{i:011d}" for i in range(20_000))
    frames = [{"type": "message", "id": i, "content": words} for i in range(TURNS)]
    for frame in ({"type": "hello"}, *frames):
        await loop.sock_sendall(sock, _masked_text(orjson.dumps(frame)))
    async with aiohttp.ClientSession() as http:
        try:
            await wait_until(lambda: _overflows(http, url), what="a 1013 close counted", poll_s=0.1)
        finally:
            sock.close()
        # The worker serves on.
        status, _, body = await post(http, url + "/v1/chat/completions", chat_body())
        assert status == 200, body
