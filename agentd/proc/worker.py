"""A worker process: one uvloop event loop serving the aiohttp app on an inherited socket.

A worker only knows how to serve and how to drain. It talks to the supervisor through
one pipe: ``READY`` once it accepts, then a ``HEARTBEAT`` byte every second while its
event loop turns (a stuck loop stops the heartbeats and the supervisor replaces it).
SIGUSR1 tells it the instance is leaving (``server.drain_delay_s``): /readyz fails from
then on while it keeps serving. SIGTERM makes it drain: stop accepting, close WebSockets
with 1001, finish in-flight requests within ``server.shutdown_timeout``, exit 0. If the
supervisor disappears, the pipe breaks and the worker drains too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import NoReturn

from aiohttp import web

from ..config import Config
from ..log import setup_logging
from ..runtime import WorkerInfo, WorkerState
from ..server import create_app, front_for
from . import heap
from .last_accept import stop_accepting

__all__ = ("HEARTBEAT", "HEARTBEAT_INTERVAL", "READY", "run")

log = logging.getLogger(__name__)

READY = b"r"
# Written once the worker stopped accepting: the supervisor announces a reload complete
# only when every old worker has said it (or exited), so no new connection meets the
# old configuration after it.
NOT_ACCEPTING = b"c"
HEARTBEAT = b"h"
HEARTBEAT_INTERVAL = 1.0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(info: WorkerInfo, socks: list[socket.socket], config: Config, pipe_w: int) -> NoReturn:
    """The body of a freshly forked worker; never returns."""
    code = 1
    try:
        # Forget the supervisor's signal set-up: the supervisor alone reacts to a
        # terminal's SIGINT/SIGHUP and forwards what a worker must do as SIGTERM.
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        setup_logging(config.log.level, config.log.format, str(info.id))
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        code = loop.run_until_complete(_serve(info, socks, config, pipe_w))
    except BaseException:
        log.exception("worker failed")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


async def _heartbeat(pipe_w: int, stop: asyncio.Event) -> None:
    while True:
        try:
            os.write(pipe_w, HEARTBEAT)
        except BlockingIOError:
            pass  # the supervisor is busy; the pipe holds plenty of earlier beats
        except OSError:
            log.warning("supervisor is gone; draining")
            stop.set()
            return
        await asyncio.sleep(HEARTBEAT_INTERVAL)


class _Site(web.SockSite):
    """aiohttp's site on an inherited socket, with the protocol factory given (the
    front, server/front.py) in place of the runner's own."""

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
    ) -> None:
        super().__init__(runner, sock, backlog=backlog)
        self.factory = factory
        self.sock = sock

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.factory, sock=self.sock, backlog=self._backlog)


async def _let_fresh_connections_speak(runner: web.AppRunner, limit: float = 1.0) -> None:
    """Wait (briefly) for connections accepted just now to send their first request.

    aiohttp's shutdown closes every connection that has no request in progress; one
    accepted a moment before the drain whose request bytes have not been read yet
    would be closed unanswered. A client sends its request right after connecting, so
    a short wait turns those into in-flight requests that the shutdown then completes.
    """
    server = runner.server
    if server is None:
        return
    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        # ``_request_count`` (requests seen on the connection) is aiohttp-internal; if
        # it ever goes away, the fallback makes this wait a no-op, not an error.
        if all(getattr(conn, "_request_count", 1) > 0 for conn in server.connections):
            return
        await asyncio.sleep(0.005)


def _leaving(state: WorkerState) -> None:
    """The instance is leaving: fail /readyz so load balancers stop sending, keep serving."""
    if not state.draining:
        log.info("worker %d: instance leaving, /readyz fails from now on", state.info.id)
        state.draining = True


async def _serve(info: WorkerInfo, socks: list[socket.socket], config: Config, pipe_w: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    os.set_blocking(pipe_w, False)

    state = WorkerState(info=info, workers=config.server.workers)
    # Installed before READY: the supervisor only signals ready workers.
    loop.add_signal_handler(signal.SIGUSR1, _leaving, state)
    app = create_app(config, state)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("aiohttp.access") if config.log.access else None,
        shutdown_timeout=config.server.shutdown_timeout,
        keepalive_timeout=config.server.keepalive_timeout,
    )
    await runner.setup()
    assert runner.server is not None  # set up above
    front = front_for(app, runner.server)
    factory = front or runner.server
    sites = [_Site(runner, sock, factory, config.server.backlog) for sock in socks]
    for site in sites:
        await site.start()
    frozen = heap.settle()  # before READY: no request waits on this collection
    os.write(pipe_w, READY)
    log.info(
        "worker %d serving (generation %d, %s, %d socket(s), front %s, %d objects frozen)",
        info.id,
        info.generation,
        sites[0].name,
        len(sites),
        "on" if front is not None else "off",
        frozen,
    )

    beat = asyncio.create_task(_heartbeat(pipe_w, stop))
    await stop.wait()
    log.info("worker %d draining", info.id)
    state.draining = True
    # Stop accepting: this closes the worker's copies of the listening sockets only.
    # Connections already queued on them are taken in and served, not reset with the
    # socket (last_accept.py); during a reload the slot's next worker takes later ones.
    await stop_accepting(sites, socks, factory)
    with contextlib.suppress(OSError):
        os.write(pipe_w, NOT_ACCEPTING)
    if front is not None:
        # Every connection the front holds becomes aiohttp's: the drain below treats
        # them all alike; then the answers it is still working out get their time.
        front.close()
        await front.finish(config.server.shutdown_timeout)
    await _let_fresh_connections_speak(runner)
    # Runs the app's on_shutdown (WebSockets get 1001), closes idle keep-alive
    # connections and waits up to shutdown_timeout for in-flight requests.
    await runner.cleanup()
    beat.cancel()
    log.info("worker %d stopped", info.id)
    return 0
