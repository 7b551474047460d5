"""An HTTP edge in front of a server that does not publish some of its paths, as an
operator's reverse proxy may keep parts of the admin API off the public address (or as
an older agentd lacks them): a request for one of those paths is sent on as a request
for a path the server has no route for, so the browser gets the server's own 404; every
other request is forwarded as it came."""

from __future__ import annotations

import asyncio
import re
import threading

import aiohttp
from aiohttp import web

from .procs import free_port

__all__ = ("Edge",)

# What the hidden paths become: a path no agentd version serves.
UNPUBLISHED = "/v1/admin/unpublished-by-the-edge"
# Headers that belong to one connection, not to the request or the answer.
_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}
)


class Edge:
    """Listens on a free loopback port and forwards to ``target`` (a base URL), but for
    the paths matching one of ``hidden`` (regexes over the whole path)."""

    def __init__(self, target: str, hidden: list[str]) -> None:
        self.target = target.rstrip("/")
        self.hidden = [re.compile(p) for p in hidden]
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        if not started.wait(30):
            raise RuntimeError("the edge did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self._start())
        started.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.http = aiohttp.ClientSession(auto_decompress=False)

    async def _forward(self, request: web.Request) -> web.Response:
        path = request.rel_url.path
        if any(p.fullmatch(path) for p in self.hidden):
            path = UNPUBLISHED
        url = self.target + path + (f"?{request.query_string}" if request.query_string else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self.http.request(
            request.method, url, headers=headers, data=await request.read(), allow_redirects=False
        ) as answer:
            body = await answer.read()
            sent = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            if "Content-Encoding" in answer.headers:
                sent["Content-Encoding"] = answer.headers["Content-Encoding"]
            return web.Response(status=answer.status, body=body, headers=sent)

    def close(self) -> None:
        async def stop() -> None:
            await self.runner.cleanup()  # no request is forwarded once the client is closed
            await self.http.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        if not self.thread.is_alive():
            self.loop.close()  # else the loop is closed at garbage collection, with a warning
