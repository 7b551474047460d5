"""The service registry's cost on one Redis: round trips per heartbeat and per listing,
and their time as a ratio to a PING round trip measured in the same run.

    .venv/bin/python -m bench.registry_ops [--workers 16,256,1024] [--rounds 500]

Starts its own redis-server on a free loopback port (never the system's). For each
registry size, that many workers are registered, then ``--rounds`` heartbeats (each
with a ~1 KB entry, about what a worker with a few backend nodes writes) and listings
are timed one after the other, as are as many PINGs over the same connection pool;
round trips are counted on the server (``INFO commandstats``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

from agentd.config import from_dict
from agentd.store import open_store
from tests.procs import RedisServer

TTL_S = 3.5
ENTRY = json.dumps({"stats": {"backends": [{"node": "http://10.0.0.9:8000/v1"}] * 12}}).encode()


def _calls(port: int) -> dict[str, int]:
    with redis.Redis(port=port) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


async def _median_s(op: Callable[[], Awaitable[Any]], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await op()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _run(url: str, port: int, sizes: list[int], rounds: int) -> dict[str, Any]:
    store = open_store(from_dict({"redis": {"urls": [url]}}))
    await store.start()
    registry = store.registry
    ping = store.shards.clients[0].ping  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    try:
        for size in sizes:
            for i in range(size):
                await registry.beat(f"bench/{i}", ENTRY, TTL_S)
            await registry.members(TTL_S)  # the scripts are loaded from here on
            before = _calls(port)
            await registry.beat("bench/0", ENTRY, TTL_S)
            await registry.members(TTL_S)
            after = _calls(port)
            trips = sum(after[c] - before.get(c, 0) for c in ("evalsha", "eval") if c in after)
            ping_s = await _median_s(ping, rounds)
            beat_s = await _median_s(lambda: registry.beat("bench/0", ENTRY, TTL_S), rounds)
            list_s = await _median_s(lambda: registry.members(TTL_S), max(10, rounds // 10))
            out[str(size)] = {
                "round_trips_beat_and_list": trips,
                "ping_ms": round(ping_s * 1000, 4),
                "beat_vs_ping": round(beat_s / ping_s, 2),
                "list_vs_ping": round(list_s / ping_s, 2),
            }
            for i in range(size):
                await registry.leave(f"bench/{i}")
    finally:
        await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="16,256,1024")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    args = parser.parse_args()
    sizes = [int(n) for n in args.workers.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="agentd-bench-"))
    server = RedisServer(workdir)
    try:
        results = asyncio.run(_run(server.url, server.port, sizes, args.rounds))
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print("workers  round trips (beat + list)  ping ms  beat/ping  list/ping")
    for size, r in results.items():
        print(
            f"{size:>7}  {r['round_trips_beat_and_list']:>25}  {r['ping_ms']:>7}"
            f"  {r['beat_vs_ping']:>9}  {r['list_vs_ping']:>9}"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
