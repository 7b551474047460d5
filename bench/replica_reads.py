"""Shared-state read throughput with reads on replicas vs on the master only.

    .venv/bin/python -m bench.replica_reads [--seconds 5] [--concurrency 64] [--procs 2]

Starts its own Redis master with two replicas (``--replicaof``) on free loopback ports
(never the system's). ``--procs`` processes, each with its own store and ``--concurrency``
coroutines, read shared state documents (``state_get``, 64 documents) for ``--seconds``:
with ``redis.replica_reads = []`` (every read on the master) and with ``["state"]``
against the same servers, alternated for ``--rounds`` rounds; the median of the second is
reported as a ratio to the median of the first. Which server answered is counted on the
servers (``INFO commandstats``, HMGET). The master is named by a plain ``redis://`` URL:
its replicas are found from its INFO, as for a Sentinel group's master (the same code).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from agentd.config import from_dict
from agentd.store import open_store
from agentd.store.keys import state_key
from tests.replication import ReplicaGroup
from tests.waiting import wait_until

DOCS = 64


def _cpu_s(port: int) -> float:
    """CPU seconds the server on ``port`` used so far (INFO cpu, user + system)."""
    with redis.Redis(port=port) as client:
        info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _hmgets(port: int) -> int:
    with redis.Redis(port=port) as client:
        stats = client.info("commandstats").get("cmdstat_hmget")
    return int(stats["calls"]) if stats else 0


async def _reader(url: str, kinds: list[str], start: Any, seconds: float, conc: int) -> int:
    store = open_store(from_dict({"redis": {"urls": [url], "replica_reads": kinds}}))
    await store.start()
    try:
        replicas = store.shards.replicas  # type: ignore[attr-defined]
        if replicas is not None:
            await wait_until(lambda: replicas.pick("0") is not None, what="a fresh replica")
        await asyncio.to_thread(start.wait)  # start together, once every reader is ready
        deadline = time.perf_counter() + seconds
        counts = [0] * conc

        async def read(i: int) -> None:
            n = i
            while time.perf_counter() < deadline:
                await store.state_get("bench", f"doc{n % DOCS}")
                n += 1
                counts[i] += 1

        await asyncio.gather(*(read(i) for i in range(conc)))
        return sum(counts)
    finally:
        await store.close()


def _process(args: tuple[str, list[str], Any, float, int], out: Any) -> None:
    out.put(asyncio.run(_reader(*args)))


def _measure(group: ReplicaGroup, kinds: list[str], args: argparse.Namespace) -> dict[str, Any]:
    ports = [s.port for s in group.servers]
    before = [_hmgets(p) for p in ports]
    cpu_before = [_cpu_s(p) for p in ports]
    fork = multiprocessing.get_context("fork")
    results: Any = fork.Queue()
    start = fork.Barrier(args.procs, timeout=120)  # every process connected, replicas checked
    job = (group.servers[0].url, kinds, start, args.seconds, args.concurrency)
    procs = [fork.Process(target=_process, args=(job, results)) for _ in range(args.procs)]
    for proc in procs:
        proc.start()
    total = sum(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join()
    served = [_hmgets(p) - b for p, b in zip(ports, before, strict=True)]
    cpu = [_cpu_s(p) - b for p, b in zip(ports, cpu_before, strict=True)]
    return {
        "reads_per_s": round(total / args.seconds, 1),
        "reads": total,
        "served_by": {"master": served[0], "replicas": sum(served[1:])},
        # The master's CPU per 1,000 reads (its checks and idle work included): what
        # reads cost the server that also takes every write.
        "master_cpu_ms_per_1k": round(cpu[0] * 1e6 / max(total, 1), 2),
        "replicas_cpu_ms_per_1k": round(sum(cpu[1:]) * 1e6 / max(total, 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="agentd-bench-"))
    group = ReplicaGroup(workdir, "bench", replicas=2)
    try:
        with redis.Redis(port=group.servers[0].port) as client:
            for i in range(DOCS):
                key = state_key(f"bench/doc{i}")
                client.hset(key, mapping={"v": json.dumps({"n": i, "pad": "x" * 200}), "ver": 1})
        # Alternated, so that a change in the machine's load meets both alike; the
        # median of each is compared.
        rounds: dict[str, list[dict[str, Any]]] = {"master_only": [], "replicas": []}
        for _ in range(args.rounds):
            rounds["master_only"].append(_measure(group, [], args))
            rounds["replicas"].append(_measure(group, ["state"], args))
    finally:
        group.close()
        shutil.rmtree(workdir, ignore_errors=True)
    results: dict[str, Any] = {"rounds": rounds}
    for name, runs in rounds.items():
        results[name] = {
            field: statistics.median(r[field] for r in runs)
            for field in ("reads_per_s", "master_cpu_ms_per_1k", "replicas_cpu_ms_per_1k")
        }
    base = results["master_only"]["reads_per_s"]
    results["replicas_vs_master_only"] = round(results["replicas"]["reads_per_s"] / base, 3)
    print(f"state_get reads/s, {args.procs} processes x {args.concurrency} concurrent, "
          f"{args.seconds:g}s a round, {args.rounds} rounds, master + 2 replicas:")  # fmt: skip
    for name, runs in rounds.items():
        each = ", ".join(f"{r['reads_per_s']:.0f} ({r['served_by']})" for r in runs)
        print(f"  {name:<12} median {results[name]['reads_per_s']:>9.1f}   rounds: {each}")
        print(f"  {'':<12} master CPU ms / 1k reads {results[name]['master_cpu_ms_per_1k']}, "
              f"replicas {results[name]['replicas_cpu_ms_per_1k']}")  # fmt: skip
    print(f"  ratio replicas / master only: {results['replicas_vs_master_only']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
