"""The response of an upstream HTTP/1.1 call as its connection (:mod:`.http1_connection`)
parses it: the head, then the body bytes kept until the caller reads them, the
connection paused while too many wait.
"""

from __future__ import annotations

import asyncio
import collections
import zlib
from typing import Final, Protocol

from ..errors import UpstreamError

__all__ = ("HIGH_WATER", "Reading", "Response", "protocol_error")

# Unread body bytes past which the connection stops reading until the caller catches up.
HIGH_WATER: Final = 256 * 1024


def protocol_error(what: str) -> UpstreamError:
    return UpstreamError(f"upstream sent a malformed reply: {what}", code="upstream_protocol")


class Reading(Protocol):
    """What a response needs of the connection it arrives on."""

    loop: asyncio.AbstractEventLoop

    def pause(self) -> None:
        """Stop reading: the caller is behind."""

    def resume(self) -> None:
        """Read again: the caller caught up."""


class Response:
    """One response as it arrives: its head once the connection's ``request`` returns,
    its body through :meth:`read_any` / :meth:`read`."""

    __slots__ = (
        "_conn",
        "_decoder",
        "_pieces",
        "_size",
        "_waiter",
        "done",
        "error",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, conn: Reading) -> None:
        self._conn = conn
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self._pieces: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = None
        self.done = False  # the whole body has arrived
        self.error: BaseException | None = None

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters (aiohttp's ``content_type``)."""
        value = self.headers.get("content-type", "application/octet-stream")
        return value.partition(";")[0].strip().lower()

    async def read_any(self) -> bytes:
        """The body bytes that came since the last read, waiting for some; ``b""`` at the
        end of the body."""
        while True:
            if self._pieces:
                return self._take()
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            await self._wait()

    async def read(self, limit: int = -1) -> bytes:
        """The rest of the body (at most ``limit`` bytes when ``limit >= 0``)."""
        parts = []
        size = 0
        while limit < 0 or size < limit:
            data = await self.read_any()
            if not data:
                break
            parts.append(data)
            size += len(data)
        body = b"".join(parts)
        if 0 <= limit < len(body):
            self._pieces.appendleft(body[limit:])  # not read: it stays for the next reader
            self._size += len(body) - limit
            body = body[:limit]
        return body

    def _take(self) -> bytes:
        pieces = self._pieces
        data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        if self._size >= HIGH_WATER:
            self._conn.resume()
        self._size = 0
        return data

    async def _wait(self) -> None:
        waiter = self._waiter = self._conn.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _body(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error:
                self._fail(protocol_error("the body does not decompress"))
                return
            if not data:
                return
        self._pieces.append(data)
        self._size += len(data)
        if self._size >= HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            rest = self._decoder.flush()
            if rest:
                self._pieces.append(rest)
        self.done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None and not self.done:
            self.error = exc
            self._wake()
