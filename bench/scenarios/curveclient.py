"""The cost curves' client side: sessions made and filled, timed turns, CPU windows.

The curves drive agentd from the harness process itself (aiohttp's client on one
asyncio loop) while it runs on the load CPUs (:func:`on_load_cpus`): the figures are
the server's CPU per unit of work, read from ``/proc``, so the client's own speed only
bounds how fast a point is measured, not what it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import aiohttp

from ..procstat import cpu_seconds, machine_cpu
from ..settings import Settings
from ..stats import percentile

__all__ = (
    "CpuWindow",
    "append_history",
    "make_sessions",
    "on_load_cpus",
    "post",
    "timed_posts",
)

TIMEOUT = aiohttp.ClientTimeout(total=60)
APPEND_BATCH = 100  # agentd's most messages per append (MAX_APPEND)
FILLER = "a message of ordinary length in a long conversation, about sixty chars"


@contextlib.contextmanager
def on_load_cpus(settings: Settings) -> Iterator[None]:
    """Run this process on the load CPUs for a while (it is the client), then restore."""
    if not settings.load_cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(settings.load_cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def redis_cpu(client: Any) -> float:
    """Redis's own CPU seconds (``INFO cpu``: getrusage, to the microsecond, where
    ``/proc`` counts 10 ms ticks)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class CpuWindow:
    """CPU seconds of some process trees over a window, and how busy others kept the CPUs.

    With ``redis`` (a redis-py client), the group named ``redis`` is read from Redis's
    ``INFO cpu`` instead of ``/proc``.
    """

    def __init__(self, groups: dict[str, list[int]], redis: Any = None) -> None:
        self.groups = groups
        self.redis = redis
        self.start = {name: self._read(name, pids) for name, pids in groups.items()}
        self.client = cpu_seconds([os.getpid()])
        self.box = machine_cpu()[0]
        self.t0 = time.monotonic()

    def _read(self, name: str, pids: list[int]) -> float:
        if name == "redis" and self.redis is not None:
            return redis_cpu(self.redis)
        return cpu_seconds(pids)

    def stop(self) -> dict[str, float]:
        """{group: CPU seconds}, ``wall`` and ``other_cpu_util`` (CPUs that processes
        other than the servers and this client kept busy)."""
        wall = max(time.monotonic() - self.t0, 1e-9)
        used = {n: self._read(n, p) - self.start[n] for n, p in self.groups.items()}
        mine = sum(used.values()) + cpu_seconds([os.getpid()]) - self.client
        box = machine_cpu()[0] - self.box
        used["wall"] = wall
        used["other_cpu_util"] = round(max(0.0, box - mine) / wall, 3)
        return used


async def post(
    client: aiohttp.ClientSession, url: str, body: dict[str, Any], ok: int = 200
) -> dict[str, Any]:
    async with client.post(url, json=body) as response:
        data = await response.json(content_type=None)
        if response.status != ok:
            raise RuntimeError(f"POST {url}: {response.status} {str(data)[:300]}")
        return data


async def make_sessions(
    client: aiohttp.ClientSession,
    base: str,
    count: int,
    concurrency: int = 32,
    body: dict[str, Any] | None = None,
) -> list[str]:
    """``count`` sessions created through the API (``body``: the request's, ``{}`` by
    default), ``concurrency`` at a time."""
    ids: list[str] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            ids.append((await post(client, base + "/v1/sessions", body or {}, ok=201))["id"])

    await asyncio.gather(*(one() for _ in range(count)))
    return ids


async def append_history(
    client: aiohttp.ClientSession, base: str, sid: str, count: int, concurrency: int = 8
) -> None:
    """``count`` messages (user and assistant in turn) appended to session ``sid``."""
    url = f"{base}/v1/sessions/{sid}/messages"
    batches = [range(i, min(i + APPEND_BATCH, count)) for i in range(0, count, APPEND_BATCH)]
    # In order: a session's messages are numbered as they arrive.
    for start in range(0, len(batches), concurrency):
        group = batches[start : start + concurrency]
        for batch in group:
            messages = [
                {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} {FILLER}"}
                for i in batch
            ]
            await post(client, url, {"messages": messages}, ok=201)


async def timed_posts(
    client: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]]
) -> list[float]:
    """Each body posted in turn (one at a time); the latencies in ms."""
    out = []
    for body in bodies:
        t0 = time.perf_counter()
        await post(client, url, body)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def latency(values: list[float]) -> dict[str, float | None]:
    """p50 and p99 (nearest rank) of latencies in ms."""
    if not values:
        return {"p50": None, "p99": None}
    ordered = sorted(values)
    return {p: round(percentile(ordered, q), 3) for p, q in (("p50", 50), ("p99", 99))}
