"""Store benchmark: round trips per operation and turn throughput, one Redis vs three shards.

    .venv/bin/python -m bench.store_ops [--seconds 5] [--concurrency 64]

Starts its own redis-servers on free loopback ports (never the system's). Round trips
are counted on the servers themselves: the ``INFO commandstats`` call counts before and
after a batch of each operation. Throughput runs "turns" — ``load`` (metadata and the
last 20 messages) then ``append`` (user + assistant message and the event publish) —
from ``--concurrency`` coroutines in this one process for ``--seconds``; the 3-shard
figure is reported as a ratio to the single-server one from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

from agentd.config import from_dict
from agentd.store import Store, open_store
from tests.procs import RedisServer

OPS_PER_BATCH = 200


def _command_calls(ports: list[int]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for port in ports:
        with redis.Redis(port=port) as client:
            for name, stats in client.info("commandstats").items():
                command = name.removeprefix("cmdstat_")
                totals[command] = totals.get(command, 0) + int(stats["calls"])
    return totals


async def _round_trips(
    store: Store, ports: list[int], op: Callable[[int], Awaitable[Any]]
) -> dict[str, float]:
    """Commands the servers ran per ``op``: client round trips and script-internal calls."""
    before = _command_calls(ports)
    for i in range(OPS_PER_BATCH):
        await op(i)
    after = _command_calls(ports)
    per_op = {
        cmd: (after.get(cmd, 0) - before.get(cmd, 0)) / OPS_PER_BATCH
        for cmd in after
        if after.get(cmd, 0) != before.get(cmd, 0) and cmd != "info"
    }
    # Client round trips are the commands a client sent: scripts (EVALSHA/EVAL) and
    # plain reads; what the scripts run inside is listed beside them.
    trips = sum(v for k, v in per_op.items() if k in ("evalsha", "eval", "hmget"))
    return {"round_trips": trips, **{k: round(v, 2) for k, v in sorted(per_op.items())}}


async def _measure_ops(store: Store, ports: list[int]) -> dict[str, dict[str, float]]:
    sids = [(await store.create_session()).id for _ in range(OPS_PER_BATCH)]
    turn = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]
    for sid in sids:
        await store.append(sid, turn)
    ops: dict[str, Callable[[int], Awaitable[Any]]] = {
        "create_session": lambda i: store.create_session(),
        "append (2 messages + event)": lambda i: store.append(sids[i], turn),
        "load (meta + last 20)": lambda i: store.load(sids[i], 20),
        "history after seq": lambda i: store.history(sids[i], after=1),
        "state_put": lambda i: store.state_put("bench", f"k{i}", {"n": i}),
        "state_put compare-and-set": lambda i: store.state_put(
            "bench", f"k{i}", {"n": -i}, expected_version=1
        ),
        "state_get": lambda i: store.state_get("bench", f"k{i}"),
        "state_patch (read + CAS)": lambda i: store.state_patch("bench", f"k{i}", {"m": i}),
        # The listing (GET /v1/state, GET /v1/state/{ns}): a page of 20. On shards the
        # documents' page is a ZRANGEBYLEX then one pipeline per shard (HGET, HSTRLEN),
        # which round_trips below does not count: two round trips of latency.
        "list_state_namespaces": lambda i: store.list_state_namespaces(limit=20),
        "list_state_documents": lambda i: store.list_state_documents("bench", limit=20),
    }
    return {name: await _round_trips(store, ports, op) for name, op in ops.items()}


async def _throughput(store: Store, seconds: float, concurrency: int) -> dict[str, float]:
    sids = [(await store.create_session()).id for _ in range(concurrency)]
    turn = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]
    deadline = time.perf_counter() + seconds
    counts = [0] * concurrency

    async def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            await store.load(sids[i], 20)
            await store.append(sids[i], turn)
            counts[i] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"turns_per_s": round(sum(counts) / elapsed, 1), "seconds": round(elapsed, 2)}


async def _run(urls: list[str], ports: list[int], args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(from_dict({"redis": {"urls": urls}}))
    await store.start()
    try:
        return {
            "ops": await _measure_ops(store, ports),
            "throughput": await _throughput(store, args.seconds, args.concurrency),
        }
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="agentd-bench-"))
    servers = [RedisServer(workdir) for _ in range(4)]
    try:
        results = {
            "single": asyncio.run(_run([servers[0].url], [servers[0].port], args)),
            "sharded-3": asyncio.run(
                _run([s.url for s in servers[1:]], [s.port for s in servers[1:]], args)
            ),
        }
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    single = results["single"]["throughput"]["turns_per_s"]
    sharded = results["sharded-3"]["throughput"]["turns_per_s"]
    results["sharded_vs_single"] = round(sharded / single, 3)
    print("round trips per operation (single server; identical with 3 shards):")
    for name, stats in results["single"]["ops"].items():
        inside = ", ".join(f"{k} {v:g}" for k, v in stats.items() if k != "round_trips")
        print(f"  {name:<30} {stats['round_trips']:g}   ({inside})")
    print(f"turns/s (load + append), {args.concurrency} concurrent, {args.seconds:g}s each:")
    print(f"  single    {single:>10.1f}")
    print(f"  sharded-3 {sharded:>10.1f}   ratio {results['sharded_vs_single']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
