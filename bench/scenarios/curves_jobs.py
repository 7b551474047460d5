"""``curve-backlog``: a background job's enqueue-to-start latency, and what each job
costs, vs the depth of the backlog it joins.

Per point: N jobs posted, as fast as they are taken, to a gateway instance (agentd that
takes no job of the default partition, as in the ``jobs`` scenario) while an agentd
with one worker drains them: the queue deepens as far as submission outruns the drain.
The records (``created``, ``started``, ``done``) give each job's wait and the drain's
rate; the CPU per job is read around the whole point.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .. import targets
from ..curves import curve, series
from ..measure import Bench, Served
from ..procstat import cpu_seconds, machine_cpu
from ..stats import percentile
from .common import Scenario, have
from .curveclient import redis_cpu
from .jobs import (
    DRAIN_LIMIT_S,
    GATEWAY,
    GATEWAY_CONFIG,
    POLL_S,
    _depth,
    _Queue,
    _run_submitter,
    _submit_command,
)

__all__ = ("CURVE_BACKLOG",)

# Jobs submitted per point (the depth they build depends on how much faster they are
# taken than run).
DEPTHS = {"tiny": (30, 100), "quick": (500, 2000, 6000), "full": (1000, 10_000, 40_000)}


class _PeakDepth(threading.Thread):
    """The deepest the queue got, read every ``POLL_S`` on a connection of its own."""

    def __init__(self, url: str) -> None:
        import redis

        super().__init__(name="queue-depth", daemon=True)
        self.client = redis.Redis.from_url(url)
        self.peak = 0
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _depth(self.client))
            self.done.wait(POLL_S)

    def stop(self) -> int:
        self.done.set()
        self.join(timeout=10)
        self.peak = max(self.peak, _depth(self.client))
        self.client.close()
        return self.peak


def _point(
    bench: Bench, worker: Served, gateway: Served, queue: _Queue, redis_url: str, count: int
) -> dict[str, Any]:
    """``count`` jobs submitted through the gateway as fast as it takes them, while the
    worker drains them; the backlog is what the queue holds when the last is in."""
    cmd, out = _submit_command(bench, gateway.target.url(), count)
    pids = worker.target.pids()
    front_pids = gateway.target.pids()
    mark: dict[str, float] = {}

    def start() -> None:  # the submitter's connections are open: the window begins
        mark.update(
            agentd=cpu_seconds(pids),
            redis=redis_cpu(queue.client),
            front=cpu_seconds(front_pids),
            box=machine_cpu()[0],
            t=time.monotonic(),
        )

    peak = _PeakDepth(redis_url)
    try:
        submitted, submitter_cpu = _run_submitter(cmd, out, start)
    finally:
        queued = peak.stop()
    queue.wait_drained(DRAIN_LIMIT_S)
    agentd_cpu = cpu_seconds(pids) - mark["agentd"]
    redis_used = redis_cpu(queue.client) - mark["redis"]
    ours = agentd_cpu + redis_used + submitter_cpu + cpu_seconds(front_pids) - mark["front"]
    wall = max(time.monotonic() - mark["t"], 1e-9)
    other = max(0.0, machine_cpu()[0] - mark["box"] - ours) / wall
    ids = submitted["ids"]
    rows = queue.records(ids)
    done = [r for r in rows if r[0] == "completed"]
    if not ids or len(done) != len(ids):
        raise RuntimeError(f"{len(done)} of {len(ids)} jobs completed ({count} asked)")
    waits = sorted((r[2] - r[1]) * 1000.0 for r in done)
    # The drain alone: the jobs done after the last submission, over that time.
    t_end, last_done = submitted["t_end"], max(r[3] for r in done)
    tail = [r for r in done if r[3] > t_end]
    rate = len(tail) / (last_done - t_end) if len(tail) >= 2 and last_done > t_end else None
    n = len(done)
    return {
        "jobs": n,
        "depth": queued,
        "submit_rate": submitted["rate"],
        "submit_command": " ".join(cmd),
        "drain_jobs_per_s": round(rate, 1) if rate else None,
        "agentd_cpu_ms_per_job": round(agentd_cpu / n * 1000.0, 4),
        "redis_cpu_ms_per_job": round(redis_used / n * 1000.0, 4),
        "wait_p50_ms": round(percentile(waits, 50), 2),
        "wait_max_ms": round(waits[-1], 2),
        "depth_over_rate_ms": round(queued / rate * 1000.0, 2) if rate else None,
        "wait_max_over_queueing": round(waits[-1] / (queued / rate * 1000.0), 3)
        if rate and queued
        else None,
        "submit_errors": submitted["error_count"],
        "other_cpu_util": round(other, 3),
    }


def run_backlog(bench: Bench) -> None:
    s = bench.settings
    if not have("redis-server"):
        bench.record.update(status="skipped", reason="redis-server is not installed")
        return
    bench.record["notes"].append(
        "Each point: N background jobs (echo agent) posted as fast as they are taken "
        "(bench.scenarios.jobs submit, 128 connections) to a gateway agentd that runs no "
        "job (its own partition only), while an agentd with 1 worker (default [jobs]: 32 "
        "at once, 4 queue streams) drains them; both run for the whole sweep, on the "
        "server CPU with Redis. The depth is the most the queue streams held (XLEN, read "
        "every 50 ms while the jobs went in). Wait = started - created of each job; "
        "drain rate = the jobs done "
        "after the last submission / that time; CPU per job = the draining agentd's "
        "(/proc) and Redis's (INFO cpu; the enqueues included) from the first submission "
        "to the empty queue, / N."
    )
    points = []
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        queue = _Queue(redis.url)
        gateway = targets.agentd(
            bench.workdir, s.server_cpus, redis_url=redis.url, name="agentd-gateway",
            extra_config=GATEWAY_CONFIG, args=("--partitions", GATEWAY),
        )  # fmt: skip
        draining = targets.agentd(bench.workdir, s.server_cpus, redis_url=redis.url)
        try:
            with (
                bench.serve(gateway, extra_pids=[redis.proc.pid]) as front,
                bench.serve(draining, extra_pids=[redis.proc.pid]) as worker,
            ):
                for count in DEPTHS[s.mode]:
                    points.append(_point(bench, worker, front, queue, redis.url, count))
                    if bench.tick is not None:
                        bench.tick()
        finally:
            queue.close()
    why = (
        "The queue is a Redis stream per shard read with XREADGROUP and each job is "
        "acknowledged with XACK/XDEL, all O(1) in the stream's length: the CPU per job "
        "and the drain rate stay flat as the backlog deepens. The wait is not flat, by "
        "queueing and not by cost: a job waits for the jobs ahead of it, depth / drain rate "
        "(linear in the depth with slope 1 / rate; `depth_over_rate_ms` in the points)."
    )
    bench.record["figures"]["points"] = points
    bench.record["figures"]["curves"] = [
        curve("backlog_cost", "Cost per job vs backlog depth", "jobs queued",
              "CPU ms per job; jobs/s drained",
              [series("agentd CPU per job",
                      [(p["depth"], p["agentd_cpu_ms_per_job"]) for p in points], "flat"),
               series("Redis CPU per job",
                      [(p["depth"], p["redis_cpu_ms_per_job"]) for p in points], "flat"),
               series("jobs/s drained", [(p["depth"], p["drain_jobs_per_s"]) for p in points],
                      "flat")], why),
        curve("backlog_wait", "Enqueue-to-start wait vs backlog depth", "jobs queued",
              "wait, ms",
              [series("wait p50", [(p["depth"], p["wait_p50_ms"]) for p in points], "linear"),
               series("wait max", [(p["depth"], p["wait_max_ms"]) for p in points], "linear"),
               series("depth / drain rate", [(p["depth"], p["depth_over_rate_ms"])
                                         for p in points], "linear")], why),
        curve("backlog_queueing", "Longest wait over what queueing predicts vs backlog depth",
              "jobs queued", "wait max ÷ (depth ÷ drain rate)",
              [series("wait max ÷ (depth ÷ rate)",
                      [(p["depth"], p["wait_max_over_queueing"]) for p in points], "flat")],
              why + " Divided by depth ÷ rate, the longest wait is the same at every depth "
              "when it is queueing alone, however busy the machine made the drain."),
    ]  # fmt: skip


CURVE_BACKLOG = Scenario(
    "curve-backlog",
    "cost curve: background jobs' enqueue-to-start wait, CPU per job and drain rate vs "
    "the backlog's depth",
    run_backlog,
    lambda s: {"tiny": 10.0, "quick": 30.0, "full": 150.0}[s.mode],
    default=False,
)
