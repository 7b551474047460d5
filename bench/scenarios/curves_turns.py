"""Cost curves of a turn: vs the session's history length, and a cache hit vs L1's size.

- ``curve-history``: a chat turn on a session holding L messages (10 → 10,000), on
  Redis, for an agent whose ``history`` window is fixed (20, the default) and one whose
  window takes the whole session (``history = 10000``, the most agentd allows).
- ``curve-l1``: a cache-hit turn (temperature 0, no session) picked at random among N
  entries held in the worker's L1 (10k → 1M), with no Redis and no L3, so every hit is
  an L1 hit (checked with ``agentd_cache_lookups``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import urllib.request
from typing import Any

import aiohttp

from .. import targets
from ..curves import curve, series
from ..measure import Bench
from .common import Scenario, have
from .curveclient import (
    TIMEOUT,
    CpuWindow,
    append_history,
    latency,
    make_sessions,
    on_load_cpus,
    post,
    timed_posts,
)

__all__ = ("CURVE_HISTORY", "CURVE_L1")

HISTORY_LENGTHS = {
    "tiny": (10, 100),
    "quick": (10, 100, 1000, 10_000),
    "full": (10, 100, 300, 1000, 3000, 10_000),
}
TURNS = {"tiny": 10, "quick": 100, "full": 400}  # timed turns per point and agent
GROWTH = 0.05  # a session takes turns until its history grew by this share
WINDOWS = {"echo-window": 20, "echo-whole": 10_000}
HISTORY_CONFIG = """
[sessions]
max_messages = 20000
[[agents]]
name = "echo-window"
backend = "echo"
history = 20
[[agents]]
name = "echo-whole"
backend = "echo"
history = 10000
"""


def _turn_body(agent: str, sid: str, i: int) -> dict[str, Any]:
    return {
        "model": agent,
        "session_id": sid,
        "messages": [{"role": "user", "content": f"turn {i}: hello there"}],
    }


async def _history_point(
    base: str, length: int, turns: int, pids: dict[str, list[int]], redis: Any
) -> dict[str, dict[str, Any]]:
    """Per agent: CPU per turn (agentd, Redis) and latency, on sessions of ``length``."""
    per_session = max(1, int(length * GROWTH / 2))  # each turn adds 2 messages
    needed = -(-turns // per_session)
    out: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:
        for agent in WINDOWS:
            sids = await make_sessions(client, base, needed)
            await asyncio.gather(*(append_history(client, base, s, length, 2) for s in sids))
            bodies = [_turn_body(agent, sids[i // per_session], i) for i in range(turns)]
            await timed_posts(client, base + "/v1/chat/completions", bodies[:2])  # warm
            window = CpuWindow(pids, redis)
            lat = await timed_posts(client, base + "/v1/chat/completions", bodies[2:])
            used = window.stop()
            n = len(lat)
            out[agent] = {
                "history": length,
                "turns": n,
                "sessions": needed,
                "agentd_cpu_ms_per_turn": round(used["agentd"] / n * 1000.0, 4),
                "redis_cpu_ms_per_turn": round(used["redis"] / n * 1000.0, 4),
                "latency_ms": latency(lat),
                "other_cpu_util": used["other_cpu_util"],
            }
    return out


def run_history(bench: Bench) -> None:
    import redis as redis_py

    s = bench.settings
    if not have("redis-server"):
        bench.record.update(status="skipped", reason="redis-server is not installed")
        return
    lengths, turns = HISTORY_LENGTHS[s.mode], TURNS[s.mode]
    bench.record["notes"].append(
        f"Each point: {turns} chat turns one at a time (echo agent, not cached) on sessions "
        f"that hold L messages when the point starts (filled through POST "
        f"/v1/sessions/{{id}}/messages; a session takes turns until it grew by "
        f"{GROWTH:.0%}, then the next one). echo-window sends the last 20 messages "
        f"upstream (history = 20), echo-whole all of them (history = 10000). CPU is "
        f"agentd's (/proc) and, apart, redis-server's (its INFO cpu) over the timed "
        f"turns, per turn. "
        f"The harness is the client, on the load CPUs; 1 worker and Redis on the server CPU."
    )
    points: list[dict[str, Any]] = []
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        cm = targets.agentd(
            bench.workdir, s.server_cpus, redis_url=redis.url, extra_config=HISTORY_CONFIG
        )
        with (
            bench.serve(cm, extra_pids=[redis.proc.pid]) as served,
            on_load_cpus(s),
            contextlib.closing(redis_py.Redis.from_url(redis.url)) as info,
        ):
            pids = {"agentd": served.target.pids(), "redis": [redis.proc.pid]}
            for length in lengths:
                url = served.target.url()
                got = asyncio.run(_history_point(url, length, turns, pids, info))
                points += [{"agent": agent, **fig} for agent, fig in got.items()]
                if bench.tick is not None:
                    bench.tick()
    bench.record["figures"]["points"] = points
    bench.record["figures"]["curves"] = _history_curves(points)


def _pts(points: list[dict[str, Any]], agent: str, key: str) -> list[tuple[float, Any]]:
    out = []
    for p in points:
        if p["agent"] == agent:
            value = p["latency_ms"][key] if key in ("p50", "p99") else p[key]
            out.append((p["history"], value))
    return out


def _history_curves(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    why = (
        "A turn reads at most `history` messages of its session (XREVRANGE with a COUNT) "
        "and sends them upstream: with a fixed window its cost does not depend on how "
        "long the session is (flat); with the whole session as its window it reads, "
        "decodes and sends every message (linear in the history's length)."
    )
    cpu = [
        series("history = 20: agentd CPU", _pts(points, "echo-window", "agentd_cpu_ms_per_turn"),
               "flat"),
        series("history = 20: Redis CPU", _pts(points, "echo-window", "redis_cpu_ms_per_turn"),
               "flat"),
        series("whole session: agentd CPU", _pts(points, "echo-whole", "agentd_cpu_ms_per_turn"),
               "linear"),
        series("whole session: Redis CPU", _pts(points, "echo-whole", "redis_cpu_ms_per_turn"),
               "linear"),
    ]  # fmt: skip
    lat = [
        series(f"{name}: {p}", _pts(points, agent, p), shape)
        for agent, name, shape in (
            ("echo-window", "history = 20", "flat"),
            ("echo-whole", "whole session", "linear"),
        )
        for p in ("p50", "p99")
    ]
    return [
        curve("history_cpu", "Turn CPU vs session history length",
              "messages in the session", "CPU ms per turn", cpu, why),
        curve("history_latency", "Turn latency vs session history length (one at a time)",
              "messages in the session", "latency, ms", lat, why),
    ]  # fmt: skip


CURVE_HISTORY = Scenario(
    "curve-history",
    "cost curve: a chat turn's CPU and p50/p99 vs its session's history length "
    "(10 -> 10,000 messages), with a fixed history window and with the whole session",
    run_history,
    lambda s: {"tiny": 6.0, "quick": 35.0, "full": 120.0}[s.mode],
    default=False,
)

# -- the L1 cache -------------------------------------------------------------------------

L1_SIZES = {"tiny": (200, 1000), "quick": (10_000, 20_000, 40_000),
            "full": (10_000, 100_000, 1_000_000)}  # fmt: skip
HITS = {"tiny": 200, "quick": 3000, "full": 20_000}  # timed hits per point
FILL_CONNECTIONS = 64
HIT_CONNECTIONS = 16
L1_CONFIG = """
[cache]
l1_max_bytes = {max_bytes}
disk_path = ""
"""
HIT_RE = re.compile(r'^agentd_cache_lookups_total\{result="hit-l1"\} ([0-9.e+]+)$', re.M)


def _l1_body(i: int) -> dict[str, Any]:
    return {"model": "echo", "temperature": 0,
            "messages": [{"role": "user", "content": f"question {i}: hello there"}]}  # fmt: skip


def _l1_hits(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in HIT_RE.findall(text))


async def _fill(base: str, start: int, stop: int) -> None:
    """Entries ``start``..``stop`` put in L1 (one miss each)."""
    queue = iter(range(start, stop))
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:

        async def worker() -> None:
            for i in queue:
                await post(client, base + "/v1/chat/completions", _l1_body(i))

        await asyncio.gather(*(worker() for _ in range(FILL_CONNECTIONS)))


async def _hits(base: str, held: int, count: int, pids: dict[str, list[int]]) -> dict[str, Any]:
    rng = random.Random(f"l1:{held}")
    picks = iter([rng.randrange(held) for _ in range(count)])
    lat: list[float] = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:

        async def worker() -> None:
            for i in picks:
                t0 = time.perf_counter()
                await post(client, base + "/v1/chat/completions", _l1_body(i))
                lat.append((time.perf_counter() - t0) * 1000.0)

        hits0 = _l1_hits(base)
        window = CpuWindow(pids)
        await asyncio.gather(*(worker() for _ in range(HIT_CONNECTIONS)))
        used = window.stop()
        hits = _l1_hits(base) - hits0
    return {
        "entries": held,
        "requests": count,
        "l1_hits": int(hits),
        "agentd_cpu_ms_per_hit": round(used["agentd"] / count * 1000.0, 5),
        "latency_ms": latency(lat),
        "other_cpu_util": used["other_cpu_util"],
    }


def run_l1(bench: Bench) -> None:
    s = bench.settings
    sizes, count = L1_SIZES[s.mode], HITS[s.mode]
    bench.record["notes"].append(
        f"Each point: L1 filled to N entries (N distinct cacheable requests, temperature 0, "
        f"no session; {FILL_CONNECTIONS} connections), then {count} hits on entries picked "
        f"at random among the N ({HIT_CONNECTIONS} connections). One worker, in-memory "
        f'store, no L3 (disk_path = ""), l1_max_bytes large enough to hold them all. CPU '
        f"is the worker's over the hits; every timed request must be an L1 hit "
        f'(agentd_cache_lookups_total{{result="hit-l1"}}).'
    )
    max_bytes = max(sizes) * 4096
    points = []
    cm = targets.agentd(bench.workdir, s.server_cpus,
                        extra_config=L1_CONFIG.format(max_bytes=max_bytes))  # fmt: skip
    with bench.serve(cm) as served, on_load_cpus(s):
        base = served.target.url()
        pids = {"agentd": served.target.pids()}
        held = 0
        for size in sizes:
            t0 = time.monotonic()
            asyncio.run(_fill(base, held, size))
            fill_s = time.monotonic() - t0
            held = size
            point = asyncio.run(_hits(base, held, count, pids))
            point["fill_s"] = round(fill_s, 2)
            if point["l1_hits"] != count:
                raise RuntimeError(f"{point['l1_hits']} L1 hits of {count} requests at {size}")
            points.append(point)
            if bench.tick is not None:
                bench.tick()
    why = (
        "L1 is a hash table with an LRU list (agentd/_fastpath.pyx LRUCache): a look-up "
        "hashes the request and follows one bucket, whatever the table's size (flat); "
        "only CPU cache misses grow as the table outgrows the caches."
    )
    cpu = [series("agentd CPU per hit", [(p["entries"], p["agentd_cpu_ms_per_hit"])
                                          for p in points], "flat")]  # fmt: skip
    lat = [series(f"hit {q}", [(p["entries"], p["latency_ms"][q]) for p in points], "flat")
           for q in ("p50", "p99")]  # fmt: skip
    bench.record["figures"]["points"] = points
    bench.record["figures"]["curves"] = [
        curve("l1_cpu", "Cache-hit CPU vs entries in L1", "entries in L1",
              "CPU ms per hit", cpu, why),
        curve("l1_latency", f"Cache-hit latency vs entries in L1 ({HIT_CONNECTIONS} connections)",
              "entries in L1", "latency, ms", lat, why),
    ]  # fmt: skip


CURVE_L1 = Scenario(
    "curve-l1",
    "cost curve: a cache-hit turn's CPU and p50/p99 vs the entries held in L1 "
    "(10k -> 1M; quick 10k -> 40k)",
    run_l1,
    lambda s: {"tiny": 5.0, "quick": 40.0, "full": 600.0}[s.mode],
    default=False,
)
