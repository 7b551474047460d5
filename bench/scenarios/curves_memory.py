"""Memory curves: Redis per idle session and per message, a worker per open WebSocket.

- ``curve-redis-memory``: Redis's ``used_memory`` as sessions are created (empty, idle)
  and as messages are appended, against the same Redis before: bytes per session and
  per message, at each count.
- ``curve-ws-memory``: a worker's RSS with N idle WebSockets open (each after
  ``hello``/``ready``, so it watches its session), against the same worker before they
  opened; a fresh agentd on Redis per point, so no point inherits another's heap.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from .. import targets
from ..curves import curve, series
from ..measure import Bench
from .common import Scenario, have
from .curveclient import TIMEOUT, append_history, make_sessions, on_load_cpus
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
MEMORY_CONFIG = """
[sessions]
max_messages = 1000000
"""


def _used(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


async def _grow_sessions(base: str, count: int) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:
        await make_sessions(client, base, count)


async def _grow_messages(base: str, sids: list[str], per_session: int) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:
        await asyncio.gather(*(append_history(client, base, s, per_session, 1) for s in sids))


async def _sessions(base: str, count: int) -> list[str]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:
        return await make_sessions(client, base, count)


def run_redis_memory(bench: Bench) -> None:
    import redis as redis_py

    s = bench.settings
    if not have("redis-server"):
        bench.record.update(status="skipped", reason="redis-server is not installed")
        return
    bench.record["notes"].append(
        "Sessions: created empty through POST /v1/sessions (each a meta hash and an entry "
        f"in the session index), counted up; messages: appended through POST "
        f"/v1/sessions/{{id}}/messages, 100 a request, spread over {MESSAGE_SESSIONS} "
        f"sessions, each about 75 bytes of text (a user or assistant message). Bytes = "
        f"Redis INFO used_memory at the count - used_memory before the first (sessions) "
        f"(after {WARMUP} warm-up sessions) or with the {MESSAGE_SESSIONS} sessions "
        f"holding 100 messages each (messages); the slope of a fitted line (with an "
        f"intercept: Redis's own buffers move a little) is the bytes each costs. "
        f"max_messages = "
        f"1,000,000 so nothing is trimmed."
    )
    points: dict[str, list[dict[str, Any]]] = {"sessions": [], "messages": []}
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        client = redis_py.Redis.from_url(redis.url)
        cm = targets.agentd(
            bench.workdir, s.server_cpus, redis_url=redis.url, extra_config=MEMORY_CONFIG
        )
        with bench.serve(cm, extra_pids=[redis.proc.pid]) as served, on_load_cpus(s):
            base = served.target.url()
            # Warm-up: agentd's Redis connections (their buffers count in used_memory)
            # open on the first requests; the baseline is taken after them.
            asyncio.run(_grow_sessions(base, WARMUP))
            before, made = _used(client), 0
            for count in SESSION_COUNTS[s.mode]:
                asyncio.run(_grow_sessions(base, count - made))
                made = count
                grown = _used(client) - before
                points["sessions"].append({"count": count, "bytes": grown,
                                           "bytes_each": round(grown / count, 1)})  # fmt: skip
            sids = asyncio.run(_sessions(base, MESSAGE_SESSIONS))
            asyncio.run(_grow_messages(base, sids, 100))  # the streams exist: warm-up
            before, made = _used(client), 0
            for count in MESSAGE_COUNTS[s.mode]:
                per = (count - made) // MESSAGE_SESSIONS
                asyncio.run(_grow_messages(base, sids, per))
                made += per * MESSAGE_SESSIONS
                grown = _used(client) - before
                points["messages"].append({"count": made, "bytes": grown,
                                           "bytes_each": round(grown / made, 1)})  # fmt: skip
                if bench.tick is not None:
                    bench.tick()
        client.close()
    why = (
        "A session is a meta hash, an index entry and (once it has messages) a stream of "
        "one entry per message, trimmed to max_messages: Redis holds a fixed amount per "
        "idle session and per message, so its memory grows linearly in both (the slope is "
        "the bytes each costs)."
    )
    bench.record["figures"]["points"] = points
    bench.record["figures"]["curves"] = [
        curve("redis_sessions", "Redis memory vs idle sessions", "idle sessions",
              "Redis used_memory growth, bytes",
              [series("idle sessions", [(p["count"], p["bytes"]) for p in points["sessions"]],
                      "linear")], why),
        curve("redis_messages", "Redis memory vs messages stored", "messages stored",
              "Redis used_memory growth, bytes",
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
