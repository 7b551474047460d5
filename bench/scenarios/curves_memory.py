"""Memory curves: Redis per idle session and per message, a worker per open WebSocket.

- ``curve-redis-memory``: what Redis holds for its data (``used_memory`` less its
  clients' buffers, see :mod:`.redismem`) as sessions are created (empty, idle) and as
  messages are appended, against the same Redis before: bytes per session and per
  message, at each count; every session made is checked to be there at the end.
- ``curve-ws-memory``: a worker's RSS with N idle WebSockets open (each after
  ``hello``/``ready``, so it watches its session), against the same worker before they
  opened; a fresh agentd on Redis per point, so no point inherits another's heap.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from agentd.store import keys as K
from tests.waiting import wait_until_sync

from .. import targets
from ..curves import curve, series
from ..measure import Bench
from .common import Scenario, have
from .curveclient import TIMEOUT, append_history, make_sessions, on_load_cpus
from .redismem import data_bytes
from .ws import _idle

__all__ = ("CURVE_REDIS_MEMORY", "CURVE_WS_MEMORY")

# Redis's hash tables grow in doublings, so used_memory rises in steps: several points
# per decade keep the fitted slope from resting on one step.
SESSION_COUNTS = {"tiny": (300, 1000), "quick": (1000, 2500, 5000, 10_000),
                  "full": (1000, 3000, 10_000, 30_000, 100_000)}  # fmt: skip
MESSAGE_COUNTS = {"tiny": (1000, 3000), "quick": (1000, 5000, 20_000, 50_000),
                  "full": (10_000, 30_000, 100_000, 300_000, 500_000)}  # fmt: skip
WARMUP = 100  # sessions created before the baseline
MESSAGE_SESSIONS = 10  # the messages are spread over this many sessions
AGENT = "echo"  # the sessions' agent (bench.targets' config)
# [jobs] lease_s = 2: the job runner's first reclaim (XAUTOCLAIM), which makes Redis
# allocate about 24 KB once, comes about a second after the start instead of 11-19 s,
# and the baseline waits for it (_reclaimed).
MEMORY_CONFIG = """
[sessions]
max_messages = 1000000
[jobs]
lease_s = 2.0
"""


async def _grow_sessions(base: str, count: int) -> list[str]:
    # Of an agent, as sessions are in use: each is also in that agent's index.
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:
        return await make_sessions(client, base, count, body={"agent": AGENT})


async def _grow_messages(base: str, sids: list[str], per_session: int) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:
        await asyncio.gather(*(append_history(client, base, s, per_session, 1) for s in sids))


def _used(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def _reclaimed(client: Any) -> bool:
    return int(client.info("commandstats").get("cmdstat_xautoclaim", {}).get("calls", 0)) > 0


def _reading(client: Any, url: str) -> tuple[int, int]:
    """(data bytes, used_memory): the measure and, for comparison, the raw figure."""
    data = data_bytes(url)
    return data, _used(client)


def _point(count: int, reading: tuple[int, int], before: tuple[int, int]) -> dict[str, Any]:
    grown = reading[0] - before[0]
    return {"count": count, "bytes": grown, "bytes_each": round(grown / count, 1),
            "used_memory_growth": reading[1] - before[1]}  # fmt: skip


def _check_sessions(client: Any, sids: list[str]) -> dict[str, int]:
    """Every session made is still there, each with its entries in the session index
    and its agent's (RuntimeError if not: a session lost would be agentd's bug, not the
    curve's)."""
    pipe = client.pipeline(transaction=False)
    for sid in sids:
        pipe.exists(K.session_keys(sid)[0])
    found = sum(pipe.execute())
    indexed: set[str] = set()
    by_agent: set[str] = set()
    for key in client.scan_iter(match=K.session_index("*") + "*", count=1000):
        mine = by_agent if key.decode().endswith(K.AGENT_INDEX_JOIN + AGENT) else indexed
        mine.update(m.decode() for m in client.zrange(key, 0, -1))
    made = set(sids)
    got = {"sessions": len(sids), "found": found, "indexed": len(indexed & made),
           "agent_indexed": len(by_agent & made), "index_entries": len(indexed)}  # fmt: skip
    if not found == got["indexed"] == got["agent_indexed"] == len(sids):
        raise RuntimeError(f"sessions lost: {got}")
    return got


def _accounting(client: Any, sids: list[str]) -> dict[str, float]:
    """What one idle session's keys hold by MEMORY USAGE (a sample of metas; the index's
    share per entry), to set beside the fitted slope."""
    sample = sids[:: max(1, len(sids) // 200)]
    metas = [int(client.memory_usage(K.session_keys(s)[0], samples=0)) for s in sample]
    out = {"meta_hash_bytes": round(sum(metas) / len(metas), 1), "expires_entry_bytes": 24.0}
    for key in client.scan_iter(match=K.session_index("*") + "*", count=1000):
        name = "agent_index" if K.AGENT_INDEX_JOIN.encode() in key else "index"
        entries = max(1, int(client.zcard(key)))
        out[f"{name}_bytes_per_entry"] = round(
            int(client.memory_usage(key, samples=0)) / entries, 1
        )
    return out


def run_redis_memory(bench: Bench) -> None:
    import redis as redis_py

    s = bench.settings
    if not have("redis-server"):
        bench.record.update(status="skipped", reason="redis-server is not installed")
        return
    bench.record["notes"].append(
        f"Sessions: created empty through POST /v1/sessions for the agent {AGENT} (each a "
        "meta hash, with a TTL, an entry in the session index and one in its agent's), "
        "counted up; messages: appended through POST "
        f"/v1/sessions/{{id}}/messages, 100 a request, spread over {MESSAGE_SESSIONS} "
        f"sessions, each about 75 bytes of text (a user or assistant message). Bytes = "
        f"Redis's used_memory less every client's memory (CLIENT LIST tot-mem, read in "
        f"the same MULTI), once no client holds an enlarged reply buffer and no key table "
        f"is rehashing (bench/scenarios/redismem.py), at the count - the same before the "
        f"first (sessions: after {WARMUP} warm-up sessions and agentd's first job "
        f"reclaim; messages: with the {MESSAGE_SESSIONS} sessions holding 100 messages "
        f"each). used_memory_growth is the raw used_memory's, for comparison: it moves "
        f"with agentd's connections' buffers, which Redis shrinks seconds after a burst. "
        f"The slope of a fitted line (with an intercept: the key table grows in "
        f"doublings) is the bytes each costs. max_messages = 1,000,000 so nothing is "
        f"trimmed; every session made is checked to be there, indexed, at the end."
    )
    points: dict[str, list[dict[str, Any]]] = {"sessions": [], "messages": []}
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        client = redis_py.Redis.from_url(redis.url)
        cm = targets.agentd(
            bench.workdir, s.server_cpus, redis_url=redis.url, extra_config=MEMORY_CONFIG
        )
        with bench.serve(cm, extra_pids=[redis.proc.pid]) as served, on_load_cpus(s):
            base = served.target.url()
            # Warm-up: agentd's Redis connections open on the first requests, and Redis
            # allocates once for the first job reclaim; the baseline is taken after both.
            made_ids = asyncio.run(_grow_sessions(base, WARMUP))
            wait_until_sync(lambda: _reclaimed(client), 60.0, "agentd's first job reclaim")
            before, made = _reading(client, redis.url), 0
            for count in SESSION_COUNTS[s.mode]:
                made_ids += asyncio.run(_grow_sessions(base, count - made))
                made = count
                points["sessions"].append(_point(count, _reading(client, redis.url), before))
            sids = asyncio.run(_grow_sessions(base, MESSAGE_SESSIONS))
            asyncio.run(_grow_messages(base, sids, 100))  # the streams exist: warm-up
            before, made = _reading(client, redis.url), 0
            for count in MESSAGE_COUNTS[s.mode]:
                per = (count - made) // MESSAGE_SESSIONS
                asyncio.run(_grow_messages(base, sids, per))
                made += per * MESSAGE_SESSIONS
                points["messages"].append(_point(made, _reading(client, redis.url), before))
                if bench.tick is not None:
                    bench.tick()
            check = _check_sessions(client, made_ids + sids)
            logs = sum(int(client.xlen(K.session_keys(sid)[1])) for sid in sids)
            if logs != made + 100 * MESSAGE_SESSIONS:
                raise RuntimeError(f"{logs} messages stored of {made + 100 * MESSAGE_SESSIONS}")
            check["messages"] = logs
            accounting = _accounting(client, made_ids)
        client.close()
    why = (
        "A session is a meta hash, two index entries and (once it has messages) a stream of "
        "one entry per message, trimmed to max_messages: Redis holds a fixed amount per "
        "idle session and per message, so its memory grows linearly in both (the slope is "
        "the bytes each costs)."
    )
    bench.record["figures"]["points"] = points
    bench.record["figures"]["stored"] = check
    bench.record["figures"]["accounting"] = accounting
    bench.record["figures"]["curves"] = [
        curve("redis_sessions", "Redis memory vs idle sessions", "idle sessions",
              "Redis memory growth (used_memory less clients' buffers), bytes",
              [series("idle sessions", [(p["count"], p["bytes"]) for p in points["sessions"]],
                      "linear")], why),
        curve("redis_messages", "Redis memory vs messages stored", "messages stored",
              "Redis memory growth (used_memory less clients' buffers), bytes",
              [series("messages", [(p["count"], p["bytes"]) for p in points["messages"]],
                      "linear")], why),
    ]  # fmt: skip


CURVE_REDIS_MEMORY = Scenario(
    "curve-redis-memory",
    "cost curve: Redis used_memory vs idle sessions and vs messages stored "
    "(bytes per session, per message)",
    run_redis_memory,
    lambda s: {"tiny": 5.0, "quick": 30.0, "full": 240.0}[s.mode],
    default=False,
)

# -- WebSockets ----------------------------------------------------------------------------

WS_COUNTS = {"tiny": (20, 60), "quick": (250, 1000, 2000)}


def run_ws_memory(bench: Bench) -> None:
    s = bench.settings
    if not have("redis-server"):
        bench.record.update(status="skipped", reason="redis-server is not installed")
        return
    counts = WS_COUNTS.get(s.mode) or (1000, 5000, s.ws_idle)
    bench.record["notes"].append(
        "Each point: a fresh agentd (1 worker) on Redis, its RSS (supervisor and worker; "
        "only the worker's changes) read before and with N idle WebSockets open, each "
        "after hello/ready (so the worker holds its session's watch), opened by the "
        "ws-idle client of bench.loadgen. KiB per connection: the slope of the line fitted "
        "to the growths (its intercept is what the first connections cost once: buffers, "
        "code paths warmed up), and each point's growth / N."
    )
    points = []
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        for count in counts:
            cm = targets.agentd(bench.workdir, s.server_cpus, redis_url=redis.url)
            with bench.serve(cm, extra_pids=[redis.proc.pid]) as served:
                got = _idle(bench, served, count)
            if got["open"] != count:
                raise RuntimeError(f"{got['open']} of {count} WebSockets opened: {got['errors']}")
            grown_kib = (got["rss_after_mb"] - got["rss_before_mb"]) * 1024
            points.append({"connections": count, "rss_growth_kib": round(grown_kib, 1),
                           "kib_each": got["rss_per_conn_kb"],
                           "rss_before_mb": got["rss_before_mb"],
                           "command": got["command"]})  # fmt: skip
            if bench.tick is not None:
                bench.tick()
    why = (
        "An idle WebSocket holds its socket, its small per-connection state and a place in "
        "its session's one watch per worker: a fixed amount each, so a worker's memory "
        "grows linearly in its open connections (the slope is KiB per connection)."
    )
    bench.record["figures"]["points"] = points
    bench.record["figures"]["curves"] = [
        curve("ws_memory", "Worker RSS vs open idle WebSockets", "open WebSockets",
              "worker RSS growth, KiB",
              [series("RSS growth", [(p["connections"], p["rss_growth_kib"]) for p in points],
                      "linear")], why),
    ]  # fmt: skip


CURVE_WS_MEMORY = Scenario(
    "curve-ws-memory",
    "cost curve: a worker's RSS vs open idle WebSockets (KiB per connection as the slope)",
    run_ws_memory,
    lambda s: {"tiny": 8.0, "quick": 25.0, "full": 60.0}[s.mode],
    default=False,
)
