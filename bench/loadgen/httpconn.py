"""A minimal keep-alive HTTP/1.1 client connection for load generation.

aiohttp's client costs several times the CPU of a server's request on this path, so
the generator speaks just enough HTTP itself: one pre-encoded request at a time on a
kept-alive connection, and responses framed by ``Content-Length`` or chunked encoding
(SSE streams). Bodies are skipped, not decoded.
"""

from __future__ import annotations

import asyncio
import re

__all__ = ("HttpConnection", "connect", "encode_request", "parse_response")

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)


def encode_request(
    method: str,
    host: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "",
    headers: dict[str, str] | None = None,
) -> bytes:
    """The bytes of one request, sent unchanged for every repetition."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Type: {content_type or 'application/json'}")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def _chunked_end(buf: bytes | bytearray, pos: int) -> int:
    """Offset just past a complete chunked body starting at ``pos``, or -1 if incomplete."""
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return -1
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        pos = line_end + 2
        if size == 0:
            # No trailers are sent by the servers measured: the body ends with CRLF.
            return pos + 2 if len(buf) >= pos + 2 else -1
        pos += size + 2
        if pos > len(buf):
            return -1


def parse_response(buf: bytes | bytearray) -> tuple[int, int] | None:
    """``(status, length consumed)`` if ``buf`` starts with a whole response, else None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end])
    status = int(head[9:12])
    body_start = head_end + 4
    match = _CONTENT_LENGTH.search(head)
    if match is not None:
        end = body_start + int(match.group(1))
        return (status, end) if len(buf) >= end else None
    if _CHUNKED.search(head):
        end = _chunked_end(buf, body_start)
        return (status, end) if end >= 0 else None
    if status in (204, 304) or 100 <= status < 200:
        return status, body_start
    raise ValueError("response without Content-Length or chunked encoding")


class HttpConnection(asyncio.Protocol):
    """One kept-alive connection; ``await request(payload)`` returns the status code."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._buf += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = parse_response(self._buf)
        except ValueError as exc:
            waiter.set_exception(exc)
            return
        if parsed is not None:
            status, consumed = parsed
            self.answered(self._buf, consumed)
            del self._buf[:consumed]
            waiter.set_result(status)

    def answered(self, buf: bytearray, size: int) -> None:
        """A whole response arrived: the first ``size`` bytes of ``buf`` (a subclass that
        needs the bytes copies them here)."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed by the server"))

    async def request(self, payload: bytes) -> int:
        if self.closed or self.transport is None:
            raise ConnectionError("connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


async def connect(host: str, port: int) -> HttpConnection:
    """Open one connection (TCP_NODELAY is set by asyncio for TCP transports)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(HttpConnection, host, port)
    return protocol
