"""A WebSocket the server closes because of the client's input (a frame over the limit)
closes lingering: a client that goes on sending the frame for megabytes before it reads
sends it all, then reads the close frame (1009) and the end of the stream, with no reset
(a plain close answers the unread bytes with one: the client's sending fails, and
WebSocket clients then give up before they read the close frame); and a client that
never stops sending is disconnected after the linger's bound. Raw sockets against a
real ``agentd serve``."""

from __future__ import annotations

import base64
import os
import select
import socket
import time
from collections.abc import Callable

import pytest

from .procs import AgentdProcess

LIMIT_S = 30.0  # generous: only a connection the server never ends reaches it
CONFIG = "[websocket]\nmax_frame_bytes = 1024\n"
CLOSE_1009 = bytes((0x88, 2)) + (1009).to_bytes(2, "big")
# More than the two sockets' buffers hold: a plain close leaves some of it unread.
STREAM_BYTES = 8 * 1024 * 1024
CHUNK = b"x" * 65536


def _connect(port: int) -> socket.socket:
    """A WebSocket after its opening handshake, on a blocking socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=LIMIT_S)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert head.endswith(b"\r\n\r\n"), head  # nothing from the server yet
    return sock


def _oversized_header() -> bytes:
    """A masked text frame header declaring a payload of 1 GiB (the limit is 1 KiB)."""
    return bytes((0x81, 0x80 | 127)) + (1 << 30).to_bytes(8, "big") + os.urandom(4)


def test_a_client_streaming_a_frame_over_the_limit_reads_close_1009(
    agentd_instance: Callable[..., AgentdProcess],
) -> None:
    proc = agentd_instance(CONFIG)
    with _connect(proc.port) as sock:
        sent = 0
        try:  # without reading, as a client writing its whole frame first does
            sock.sendall(_oversized_header())
            while sent < STREAM_BYTES:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
        except OSError as exc:
            sending_failed: OSError | None = exc
        else:
            sending_failed = None
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as exc:
            pytest.fail(f"{exc!r} after {sent} bytes sent, {received!r} read")
        assert received == CLOSE_1009
        # The server read on (and dropped) what the client still sent.
        assert sending_failed is None, f"{sending_failed!r} after {sent} bytes"


@pytest.mark.parametrize("pace", ["flood", "trickle"])
def test_a_client_that_never_stops_sending_is_disconnected(
    agentd_instance: Callable[..., AgentdProcess], pace: str
) -> None:
    """A flood reaches the linger's byte bound, a trickle its time bound: either way the
    client reads the close frame, then the end of the stream, and then its sending
    fails (the server closed the socket)."""
    proc = agentd_instance(CONFIG)
    chunk = CHUNK if pace == "flood" else b"x"
    with _connect(proc.port) as sock:
        sock.sendall(_oversized_header())
        sock.setblocking(False)
        received, eof = b"", False
        deadline = time.monotonic() + LIMIT_S
        disconnected: OSError | None = None
        while disconnected is None:
            assert time.monotonic() < deadline, f"still connected after {LIMIT_S} s"
            # Wait until the socket can be read (or has failed) or, for a flood, written.
            readable, writable, _ = select.select(
                [] if eof else [sock], [sock] if pace == "flood" else [], [sock], 0.01
            )
            try:
                if readable:
                    data = sock.recv(65536)
                    received += data
                    eof = not data
                if writable or pace == "trickle":
                    sock.send(chunk)
            except BlockingIOError:
                pass
            except OSError as exc:
                disconnected = exc
        assert received == CLOSE_1009, f"{received!r}, then {disconnected!r}"
        assert eof, f"disconnected by {disconnected!r} before the end of the stream"
