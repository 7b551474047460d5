"""HTTP load in one process: closed loop (N connections, back to back) or open loop.

Open loop sends at a constant rate whatever the server does: each request has an
intended send time on the schedule, and its latency is counted from that time, so a
server that stalls is charged for the queue it caused (no coordinated omission). When
every connection is busy, a due request waits for one (or a new one, up to the cap),
and that wait is part of its latency too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .common import Recorder, Spec, share
from .httpconn import HttpConnection, connect, encode_request

__all__ = ("run_http",)

DRAIN_LIMIT = 5.0  # seconds an open-loop run waits for its last requests


async def _open(spec: Spec, count: int) -> list[HttpConnection]:
    return list(await asyncio.gather(*(connect(spec.host, spec.port) for _ in range(count))))


async def _closed_phase(
    conns: list[HttpConnection], payload: bytes, spec: Spec, seconds: float, rec: Recorder | None
) -> None:
    deadline = time.perf_counter() + seconds

    async def one(index: int) -> None:
        conn = conns[index]
        while True:
            sent = time.perf_counter()
            if sent >= deadline:
                return
            try:
                status = await conn.request(payload)
            except (OSError, ValueError) as exc:
                if rec is not None:
                    rec.error(type(exc).__name__)
                conn.close()
                await asyncio.sleep(0.01)
                try:
                    conn = conns[index] = await connect(spec.host, spec.port)
                except OSError:
                    continue
                continue
            end = time.perf_counter()
            if rec is None or end > deadline:
                continue
            if status >= 400:
                rec.error(f"status {status}")
            rec.ok(end - sent, end)

    await asyncio.gather(*(one(i) for i in range(len(conns))))


async def _open_phase(
    idle: asyncio.Queue[HttpConnection],
    opened: list[int],
    cap: int,
    payload: bytes,
    spec: Spec,
    rate: float,
    seconds: float,
    rec: Recorder | None,
) -> None:
    async def fire(intended: float) -> None:
        if rec is not None:
            rec.lags.append(max(0.0, time.perf_counter() - intended))
        if idle.empty() and opened[0] < cap:
            opened[0] += 1
            try:
                conn = await connect(spec.host, spec.port)
            except OSError as exc:
                opened[0] -= 1
                if rec is not None:
                    rec.error(type(exc).__name__)
                return
        else:
            conn = await idle.get()
        try:
            status = await conn.request(payload)
        except (OSError, ValueError) as exc:
            opened[0] -= 1
            conn.close()
            if rec is not None:
                rec.error(type(exc).__name__)
            return
        idle.put_nowait(conn)
        end = time.perf_counter()
        if rec is not None:
            if status >= 400:
                rec.error(f"status {status}")
            rec.ok(end - intended, end)

    count = int(rate * seconds)
    start = time.perf_counter()
    if rec is not None:
        rec.start = start
    tasks: set[asyncio.Task[None]] = set()
    sent = 0
    while sent < count:
        now = time.perf_counter()
        while sent < count and start + sent / rate <= now:
            task = asyncio.get_running_loop().create_task(fire(start + sent / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if sent < count:
            await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    if tasks:
        _, late = await asyncio.wait(set(tasks), timeout=DRAIN_LIMIT)
        for task in late:
            task.cancel()
            if rec is not None:
                rec.error("unfinished")


async def run_http(spec: Spec, index: int, ready: Callable[[], object]) -> Recorder:
    """Warm up, call ``ready`` (the cross-process barrier), then measure; one process."""
    conns_n = max(1, share(spec.connections, spec.procs, index))
    host = f"{spec.host}:{spec.port}"
    payload = encode_request(spec.method, host, spec.path, spec.body, headers=spec.headers)
    rec = Recorder()
    loop = asyncio.get_running_loop()
    if spec.rate > 0:
        rate = spec.rate / spec.procs
        initial = min(conns_n, 16)
        idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
        for conn in await _open(spec, initial):
            idle.put_nowait(conn)
        opened = [initial]
        if spec.warmup > 0:
            await _open_phase(idle, opened, conns_n, payload, spec, rate, spec.warmup, None)
        await loop.run_in_executor(None, ready)
        rec.begin()
        await _open_phase(idle, opened, conns_n, payload, spec, rate, spec.duration, rec)
        rec.finish()
        rec.elapsed = spec.duration
        while not idle.empty():
            idle.get_nowait().close()
        return rec
    conns = await _open(spec, conns_n)
    if spec.warmup > 0:
        await _closed_phase(conns, payload, spec, spec.warmup, None)
    await loop.run_in_executor(None, ready)
    rec.begin()
    await _closed_phase(conns, payload, spec, spec.duration, rec)
    rec.finish()
    rec.elapsed = spec.duration
    for conn in conns:
        conn.close()
    return rec
