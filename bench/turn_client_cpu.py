"""The Redis client's CPU per cache-miss session turn, as a ratio to redis.asyncio.

    .venv/bin/python -m bench.turn_client_cpu [--turns 2000] [--rounds 5]

Starts a throw-away redis-server on a free loopback port and, in this one process (on
uvloop, as agentd's workers are), alternates for ``--rounds`` rounds:

- ``agentd``: ``--turns`` store turns, one at a time: ``begin_turn`` (the lease and the
  last 20 messages, one script) then ``end_turn`` (the user message and the reply, the
  release and the publish, one script), through agentd's ``RedisStore`` — everything
  agentd's turn pays to talk to Redis (key formatting, the shard router, redis-py,
  decoding the messages);
- ``pipeline``: the same two script calls with the same keys and arguments, recorded from
  one agentd turn, sent by ``redis.asyncio`` as one pipeline (``transaction=False``) per
  turn on sessions of their own: ``END_TURN`` of the previous turn's lease, then
  ``BEGIN_TURN`` of the next, so each script does its real work. That is one pipelined
  round trip of redis.asyncio carrying a turn's two calls;
- ``evalsha``: the same two calls sent by ``redis.asyncio`` one after the other (two
  round trips, no agentd code): what redis-py costs without agentd's layers;
- ``evalsha_agentd_client``: the same, on agentd's own redis-py client (its blocking
  connection pool, socket timeout and retry settings): the client's configuration apart
  from agentd's code above it;
- ``agentd_redis_py``: ``agentd``'s turns with the quick path of script calls off
  (``agentd/store/redis/quick.py``), every call through redis-py's ``evalsha`` as on a
  Sentinel group: what the quick path saves.

Reported: this process's CPU (``time.process_time``) per turn for each, median over the
rounds, and each side ÷ ``pipeline`` (issue 18's target for the miss path: agentd at
most 1.5 times one pipelined round trip). redis-server is another process: its CPU is
not in these figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop

from agentd.config import from_dict
from agentd.store import open_store
from agentd.store import scripts as L
from tests.procs import RedisServer

TURN = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hello there"}]
HISTORY = 20
LEASE_S = 30.0
SESSIONS = 8


async def _seed(store: Any, count: int) -> list[str]:
    """``count`` sessions, each with a history longer than the window read per turn."""
    sids = [(await store.create_session()).id for _ in range(count)]
    for sid in sids:
        for _ in range(HISTORY):
            await store.append(sid, TURN)
    return sids


async def _record(store: Any, sid: str) -> dict[str, tuple[list[str], list[Any]]]:
    """The keys and arguments of one turn's two script calls (the store's own)."""
    shards = store.shards
    seen: dict[str, tuple[list[str], list[Any]]] = {}
    real = shards.eval

    async def spy(script: L.Script, keys: list[str], args: list[Any], **kw: Any) -> Any:
        seen[script.name] = (list(keys), list(args))
        return await real(script, keys, args, **kw)

    shards.eval = spy
    try:
        lease = await store.begin_turn(sid, HISTORY, LEASE_S)
        await store.end_turn(sid, lease.token, TURN)
    finally:
        del shards.eval  # the instance attribute goes; the method is back
    return seen


def _swap(values: list[Any], old: str, new: str) -> list[Any]:
    return [v.replace(old, new) if isinstance(v, str) else v for v in values]


async def _agentd(store: Any, sids: list[str], turns: int) -> float:
    start = time.process_time()
    for i in range(turns):
        sid = sids[i % len(sids)]
        lease = await store.begin_turn(sid, HISTORY, LEASE_S)
        await store.end_turn(sid, lease.token, TURN)
    return (time.process_time() - start) / turns


async def _agentd_redis_py(store: Any, sids: list[str], turns: int) -> float:
    shards = store.shards
    quick = shards.quick
    shards.quick = [None] * len(quick)
    try:
        return await _agentd(store, sids, turns)
    finally:
        shards.quick = quick


async def _pipelined(
    client: aioredis.Redis, calls: list[tuple[list[str], list[Any], list[Any]]], turns: int
) -> float:
    """``calls``: per session (begin keys, begin args, end keys + args without token)."""
    begin, end = L.BEGIN_TURN, L.END_TURN
    tokens = []
    for keys, args, _ in calls:  # each session's first lease, outside the measurement
        tokens.append(int((await client.evalsha(begin.sha, len(keys), *keys, *args))[0]))
    start = time.process_time()
    for i in range(turns):
        n = i % len(calls)
        bkeys, bargs, (ekeys, eargs) = calls[n]
        eargs = [*eargs[:3], tokens[n], *eargs[4:]]
        async with client.pipeline(transaction=False) as pipe:
            pipe.evalsha(end.sha, len(ekeys), *ekeys, *eargs)
            pipe.evalsha(begin.sha, len(bkeys), *bkeys, *bargs)
            _, began = await pipe.execute()
        tokens[n] = int(began[0])
    spent = time.process_time() - start
    for (_, _, (ekeys, eargs)), token in zip(calls, tokens, strict=True):  # release, untimed
        await client.evalsha(end.sha, len(ekeys), *ekeys, *[*eargs[:3], token, *eargs[4:]])
    return spent / turns


async def _sequential(
    client: aioredis.Redis, calls: list[tuple[list[str], list[Any], list[Any]]], turns: int
) -> float:
    begin, end = L.BEGIN_TURN, L.END_TURN
    start = time.process_time()
    for i in range(turns):
        bkeys, bargs, (ekeys, eargs) = calls[i % len(calls)]
        began = await client.evalsha(begin.sha, len(bkeys), *bkeys, *bargs)
        eargs = [*eargs[:3], int(began[0]), *eargs[4:]]
        await client.evalsha(end.sha, len(ekeys), *ekeys, *eargs)
    return (time.process_time() - start) / turns


async def _run(url: str, turns: int, rounds: int) -> dict[str, Any]:
    store = open_store(from_dict({"redis": {"urls": [url]}}))
    await store.start()
    client = aioredis.from_url(url)
    try:
        sids = await _seed(store, SESSIONS)
        recorded = await _record(store, sids[0])
        (bkeys, bargs), (ekeys, eargs) = recorded["begin_turn"], recorded["end_turn"]
        # The same calls on sessions of the baselines' own, the session id swapped in.
        calls = []
        for sid in await _seed(store, SESSIONS):
            swapped_end = (_swap(ekeys, sids[0], sid), _swap(eargs, sids[0], sid))
            calls.append((_swap(bkeys, sids[0], sid), bargs, swapped_end))
        # agentd's own redis-py client (its blocking pool, socket timeout, no retries).
        own = store.shards.clients[0]
        figures: dict[str, list[float]] = {
            "agentd": [],
            "pipeline": [],
            "evalsha": [],
            "evalsha_agentd_client": [],
            "agentd_redis_py": [],
        }
        await _agentd(store, sids, turns // 10)  # warm-up: connections, script cache
        for _ in range(rounds):
            figures["agentd"].append(await _agentd(store, sids, turns))
            figures["pipeline"].append(await _pipelined(client, calls, turns))
            figures["evalsha"].append(await _sequential(client, calls, turns))
            figures["evalsha_agentd_client"].append(await _sequential(own, calls, turns))
            figures["agentd_redis_py"].append(await _agentd_redis_py(store, sids, turns))
    finally:
        await client.aclose()
        await store.close()
    medians = {k: statistics.median(v) for k, v in figures.items()}
    return {
        "turns_per_round": turns,
        "rounds": rounds,
        "cpu_us_per_turn": {k: round(v * 1e6, 1) for k, v in medians.items()},
        "cpu_us_per_turn_each_round": {
            k: [round(x * 1e6, 1) for x in v] for k, v in figures.items()
        },
        "agentd_vs_pipeline": round(medians["agentd"] / medians["pipeline"], 3),
        "evalsha_vs_pipeline": round(medians["evalsha"] / medians["pipeline"], 3),
        "evalsha_agentd_client_vs_pipeline": round(
            medians["evalsha_agentd_client"] / medians["pipeline"], 3
        ),
        "agentd_redis_py_vs_pipeline": round(medians["agentd_redis_py"] / medians["pipeline"], 3),
        "script_names": {"begin": L.BEGIN_TURN.name, "end": L.END_TURN.name},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turn_client_cpu", description=__doc__)
    parser.add_argument("--turns", type=int, default=2000, help="turns per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="turn-cpu-") as tmp:
        server = RedisServer(Path(tmp))
        try:
            result = uvloop.run(_run(server.url, args.turns, args.rounds))
        finally:
            server.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
