"""A TCP proxy in front of a server whose open connections a test can cut, as a failing
network would: the browser's WebSocket (and kept-alive HTTP connections) end abruptly
while the server behind goes on, and new connections pass again at once."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from .procs import free_port

__all__ = ("CutProxy",)


class CutProxy:
    """Listens on a free loopback port and forwards each connection to ``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.open: set[asyncio.StreamWriter] = set()
        self.cuts = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        if not started.wait(30):
            raise RuntimeError("the proxy did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port)
        )
        started.set()
        self.loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.open |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self.open -= {writer, up_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def cut(self) -> int:
        """Abort every open connection (both sides, no close handshake); how many."""

        async def abort() -> int:
            writers = list(self.open)
            for writer in writers:
                writer.transport.abort()
            self.cuts += 1
            return len(writers) // 2

        return asyncio.run_coroutine_threadsafe(abort(), self.loop).result(30)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for writer in list(self.open):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        if not self.thread.is_alive():
            self.loop.close()  # else the loop is closed at garbage collection, with a warning
