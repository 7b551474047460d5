"""``curve-fanout``: the server CPU an event costs vs the watchers of its session.

W clients watch one session (``GET /v1/sessions/{id}/events``, server-sent events); the
harness publishes E events to it (``POST /v1/sessions/{id}/events``, one at a time) and
waits until every watcher has every event. Once with one agentd instance, once with two
on the same Redis (the watchers split between them, the events published through the
first). The figures: agentd's CPU per event (both instances together, and each), Redis's
CPU per event, and how long the last watcher waited for the last event.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from typing import Any

import aiohttp

from .. import targets
from ..curves import curve, series
from ..measure import Bench
from .common import Scenario, have
from .curveclient import TIMEOUT, CpuWindow, make_sessions, on_load_cpus, post

__all__ = ("CURVE_FANOUT",)

WATCHERS = {"tiny": (1, 10), "quick": (1, 10, 100, 1000), "full": (1, 10, 100, 300, 1000)}
# Events published per point: as many deliveries (watchers x events) as the budget
# allows, within the bounds (more events where they are cheap: finer CPU figures).
EVENTS = {"tiny": (10, 20, 200), "quick": (30, 300, 30_000), "full": (100, 1000, 200_000)}
IDLE_S = {"tiny": 0.1, "quick": 1.0, "full": 3.0}  # the idle window's length
DELIVERY_LIMIT_S = 120.0  # the longest a point may wait for every event to arrive
EVENT = b"event: bench.tick"


async def _watch(
    client: aiohttp.ClientSession,
    url: str,
    want: int,
    counts: dict[str, Any],
    i: int,
) -> None:
    """One watcher: counts its events; once it has ``want``, it says so and stays
    connected until ``counts["release"]`` is set."""
    async with client.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {await response.text()}")
        counts["ready"] += 1
        async for line in response.content:
            if line.startswith(EVENT):
                counts["got"][i] += 1
                if counts["got"][i] >= want:
                    break
        counts["finished"] += 1
        await counts["release"].wait()


async def _until(
    counts: dict[str, Any], key: str, n: int, deadline: float, tasks: list[asyncio.Task[None]]
) -> None:
    """Until ``n`` watchers reached ``key`` (polling their own counter, not a timer)."""
    while counts[key] < n:
        if time.monotonic() > deadline or any(t.done() for t in tasks):
            _raise(tasks, f"{counts[key]} of {n} watchers {key}; {sum(counts['got'])} events")
        await asyncio.sleep(0.01)


async def _point(
    bases: list[str], watchers: int, mode: str, pids: dict[str, list[int]], redis: Any
) -> dict[str, Any]:
    low, high, budget = EVENTS[mode]
    events = max(low, min(high, budget // watchers))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as client:
        sid = (await make_sessions(client, bases[0], 1))[0]
        counts: dict[str, Any] = {"ready": 0, "finished": 0, "got": [0] * watchers,
                                  "release": asyncio.Event()}  # fmt: skip
        tasks = [
            asyncio.create_task(
                _watch(client, f"{bases[i % len(bases)]}/v1/sessions/{sid}/events", events,
                       counts, i)
            )
            for i in range(watchers)
        ]  # fmt: skip
        deadline = time.monotonic() + DELIVERY_LIMIT_S
        # Each watcher counts as ready once its response started, after its subscription.
        await _until(counts, "ready", watchers, deadline, tasks)
        before = CpuWindow(pids, redis)
        await asyncio.sleep(IDLE_S[mode])  # an idle window of a fixed length, by design
        idle_before = before.stop()
        url = f"{bases[0]}/v1/sessions/{sid}/events"
        window = CpuWindow(pids, redis)
        t0 = time.monotonic()
        for n in range(events):
            await post(client, url, {"type": "bench.tick", "data": {"n": n}}, ok=202)
        published = time.monotonic()
        await _until(counts, "finished", watchers, deadline, tasks)
        delivered = time.monotonic()
        used = window.stop()
        # What the servers use with the same watchers connected and no event is taken
        # out of the window's CPU at the same rate, so that a long window (many watchers)
        # is not charged for their upkeep, nor for Redis's own timers. Read before the
        # events and after the last delivery, the lower of the two: leftover work (the
        # previous point's connections closing, say) only ever adds to either.
        after = CpuWindow(pids, redis)
        await asyncio.sleep(IDLE_S[mode])  # an idle window of a fixed length, by design
        idle_after = after.stop()
        counts["release"].set()
        await asyncio.gather(*tasks)
        rest = {
            k: min(idle_before[k] / idle_before["wall"], idle_after[k] / idle_after["wall"])
            for k in pids
        }
        for key in pids:
            used[key] = max(0.0, used[key] - rest[key] * used["wall"])
    out: dict[str, Any] = {
        "watchers": watchers,
        "instances": len(bases),
        "events": events,
        "agentd_cpu_ms_per_event": round(
            sum(v for k, v in used.items() if k.startswith("agentd")) / events * 1000.0, 4
        ),
        "redis_cpu_ms_per_event": round(used["redis"] / events * 1000.0, 4),
        "idle_cpu_util": {k: round(rest[k], 4) for k in pids},
        "publish_s": round(published - t0, 3),
        "last_delivery_after_last_publish_ms": round((delivered - published) * 1000.0, 1),
        "other_cpu_util": used["other_cpu_util"],
    }
    for k, v in used.items():
        if k.startswith("agentd-"):
            out[f"{k}_cpu_ms_per_event"] = round(v / events * 1000.0, 4)
    return out


def _raise(tasks: list[asyncio.Task[None]], what: str) -> None:
    errors = [repr(t.exception()) for t in tasks if t.done() and t.exception()]
    for task in tasks:
        task.cancel()
    raise RuntimeError(f"fan-out: {what}; {errors[:3]}")


def run_fanout(bench: Bench) -> None:
    import redis as redis_py

    s = bench.settings
    if not have("redis-server"):
        bench.record.update(status="skipped", reason="redis-server is not installed")
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # the client holds up to 1,000 streams
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    low, high, budget = EVENTS[s.mode]
    bench.record["notes"].append(
        f"Each point: W watchers (server-sent events, aiohttp's client in the harness, on "
        f"the load CPUs) on a new session, then E events published one at a time "
        f"(E = {budget:,} / W within {low}-{high}); the point ends when every watcher has "
        f"every event. CPU per event = the agentd processes' (supervisor and 1 worker "
        f"each; /proc) and redis-server's CPU (its INFO cpu, to the microsecond) from "
        f"the first publish to the last delivery, less "
        f"what they used idle with the same watchers connected (measured over "
        f"{IDLE_S[s.mode]} s before the events and again after the last delivery, the "
        f"lower of the two, at the same rate), / E: it "
        f"includes the publishing request. Two instances, agentd-a and agentd-b, on the "
        f"same Redis and the server CPU: one instance is agentd-a alone (agentd-b runs but has no "
        f"watcher, no subscription, and is not counted); two: the watchers alternate "
        f"between them. Events are always published through agentd-a."
    )
    points: list[dict[str, Any]] = []
    with targets.redis(bench.workdir, s.server_cpus) as redis, contextlib.ExitStack() as stack:
        served = [
            stack.enter_context(bench.serve(
                targets.agentd(bench.workdir, s.server_cpus, redis_url=redis.url,
                               name=f"agentd-{name}"),
                extra_pids=[redis.proc.pid]))
            for name in "ab"
        ]  # fmt: skip
        stack.enter_context(on_load_cpus(s))
        info = stack.enter_context(contextlib.closing(redis_py.Redis.from_url(redis.url)))
        for instances in (1, 2):
            # One instance: agentd-b has no watcher, so no subscription; it is idle and
            # not counted.
            pids = {x.target.name: x.target.pids() for x in served[:instances]}
            pids["redis"] = [redis.proc.pid]
            bases = [x.target.url() for x in served[:instances]]
            for watchers in WATCHERS[s.mode]:
                points.append(asyncio.run(_point(bases, watchers, s.mode, pids, info)))
                if bench.tick is not None:
                    bench.tick()
    bench.record["figures"]["points"] = points
    bench.record["figures"]["curves"] = _curves(points)


def _curves(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def pts(instances: int, key: str) -> list[tuple[float, Any]]:
        return [(p["watchers"], p.get(key)) for p in points if p["instances"] == instances]

    why = (
        "Each worker holds one Redis subscription per watched session, however many "
        "clients watch it there, and writes each event to its own watchers: agentd's CPU "
        "per event is linear in the watchers (per worker, so two instances share it), "
        "Redis's is flat (one PUBLISH reaches one subscriber per worker)."
    )
    # Each instance's share is in the points (agentd-a/-b_cpu_ms_per_event).
    agentd_lines = [
        series("1 instance: agentd", pts(1, "agentd_cpu_ms_per_event"), "linear"),
        series("2 instances: agentd, both", pts(2, "agentd_cpu_ms_per_event"), "linear"),
    ]
    redis_lines = [
        series("1 instance: Redis", pts(1, "redis_cpu_ms_per_event"), "flat"),
        series("2 instances: Redis", pts(2, "redis_cpu_ms_per_event"), "flat"),
    ]
    return [
        curve("fanout_agentd", "agentd CPU per event vs watchers of the session",
              "watchers of the session", "agentd CPU ms per event", agentd_lines, why),
        curve("fanout_redis", "Redis CPU per event vs watchers of the session",
              "watchers of the session", "Redis CPU ms per event", redis_lines, why),
    ]  # fmt: skip


CURVE_FANOUT = Scenario(
    "curve-fanout",
    "cost curve: server CPU per session event vs its watchers (1 -> 1,000), on one and "
    "on two agentd instances",
    run_fanout,
    lambda s: {"tiny": 8.0, "quick": 30.0, "full": 90.0}[s.mode],
    default=False,
)
