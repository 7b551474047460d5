"""WebSocket load in one process: chat turns back to back, or idle connections held open.

Speaks agentd's protocol (docs/protocol.md): ``hello`` → ``ready``, then ``message`` →
``delta``… → ``done``. A turn's latency is from sending ``message`` to its ``done``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp
import orjson

from .common import Recorder, Spec, share

__all__ = ("run_ws_idle", "run_ws_turns")

CONNECT_CONCURRENCY = 200
# Tries per idle connection: one refused (an error frame, a reset) is opened again.
OPEN_ATTEMPTS = 3


def _session(source: str) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, local_addr=(source, 0), force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


def _url(spec: Spec) -> str:
    return f"http://{spec.host}:{spec.port}{spec.path}"


async def _hello(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_str('{"type":"hello"}')
    while True:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"connection ended: {msg.type.name}")
        frame = orjson.loads(msg.data)
        if frame.get("type") == "ready":
            return
        if frame.get("type") == "error":
            raise ConnectionError(f"hello refused: {frame.get('code')}")


async def _turn(ws: aiohttp.ClientWebSocketResponse, turn_id: int, content: str) -> None:
    await ws.send_str(orjson.dumps({"type": "message", "id": turn_id, "content": content}).decode())
    while True:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"connection ended: {msg.type.name}")
        frame = orjson.loads(msg.data)
        kind = frame.get("type")
        if kind == "done" and frame.get("id") == turn_id:
            return
        if kind == "error":
            raise RuntimeError(f"error frame: {frame.get('code')}")


async def _turns_phase(
    sockets: list[aiohttp.ClientWebSocketResponse], spec: Spec, seconds: float, rec: Recorder | None
) -> None:
    deadline = time.perf_counter() + seconds

    async def one(index: int) -> None:
        ws = sockets[index]
        turn_id = index * 10_000_000
        while not ws.closed:
            sent = time.perf_counter()
            if sent >= deadline:
                return
            turn_id += 1
            try:
                await _turn(ws, turn_id, spec.content)
            except (OSError, ConnectionError, RuntimeError) as exc:
                if rec is not None:
                    rec.error(type(exc).__name__)
                if ws.closed:
                    return
                continue
            end = time.perf_counter()
            if rec is not None and end <= deadline:
                rec.ok(end - sent, end)

    await asyncio.gather(*(one(i) for i in range(len(sockets))))


async def run_ws_turns(spec: Spec, index: int, ready: Callable[[], object]) -> Recorder:
    """N connections (this process's share), each running turns back to back."""
    count = max(1, share(spec.connections, spec.procs, index))
    rec = Recorder()
    source = spec.sources[index % len(spec.sources)]
    async with _session(source) as session:
        sockets = [await session.ws_connect(_url(spec), max_msg_size=0) for _ in range(count)]
        await asyncio.gather(*(_hello(ws) for ws in sockets))
        if spec.warmup > 0:
            await _turns_phase(sockets, spec, spec.warmup, None)
        await asyncio.get_running_loop().run_in_executor(None, ready)
        rec.begin()
        await _turns_phase(sockets, spec, spec.duration, rec)
        rec.finish()
        rec.elapsed = spec.duration
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return rec


async def run_ws_idle(
    spec: Spec, index: int, opened: Callable[[int], object], release: Callable[[], object]
) -> Recorder:
    """Open this process's share of idle connections (``hello`` each), report how many
    opened through ``opened``, hold them until ``release`` returns, then close them."""
    count = share(spec.connections, spec.procs, index)
    rec = Recorder()
    source = spec.sources[index % len(spec.sources)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    readers: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    async def open_one() -> None:
        for attempt in range(OPEN_ATTEMPTS):
            if attempt:  # a server (or its Redis) briefly overwhelmed: back off, then again
                await asyncio.sleep(0.5 * attempt)
            async with gate:
                started = time.perf_counter()
                ws = None
                try:
                    ws = await session.ws_connect(_url(spec), max_msg_size=0, heartbeat=None)
                    await _hello(ws)
                except (OSError, aiohttp.ClientError, ConnectionError, ValueError) as exc:
                    rec.error(type(exc).__name__)  # every failed attempt counts
                    if ws is not None:
                        await ws.close()
                    continue
                end = time.perf_counter()
                rec.ok(end - started, end)
                sockets.append(ws)
                # Read from now on: the server's pings need answers while the others open
                # (opening tens of thousands can outlast its heartbeat).
                readers.append(loop.create_task(drain(ws)))
                return

    async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
        # Reading answers the server's pings while the connection idles.
        with contextlib.suppress(Exception):
            async for _ in ws:
                pass

    async with _session(source) as session:
        rec.begin()
        await asyncio.gather(*(open_one() for _ in range(count)))
        rec.finish()
        # Those still open (not dropped by the server meanwhile).
        await loop.run_in_executor(None, opened, sum(1 for ws in sockets if not ws.closed))
        await loop.run_in_executor(None, release)
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return rec
