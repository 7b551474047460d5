"""``curve-backlog``: a background job's enqueue-to-start latency, and what each job
costs, vs the depth of the backlog it joins.

Per depth D: a gateway instance (agentd that takes no job of the default partition, as
in the ``jobs`` scenario) queues D jobs; then an agentd with one worker starts on that
backlog and drains it, while the harness watches the queue streams' lengths. The
records (``created``, ``started``, ``done``) give each job's wait and the drain's rate.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .. import targets
from ..curves import curve, series
from ..measure import Bench
from ..procstat import cpu_seconds
from ..stats import percentile
from .common import Scenario, have
from .jobs import (
    DRAIN_LIMIT_S,
    GATEWAY,
    GATEWAY_CONFIG,
    _Queue,
    _run_submitter,
    _submit_command,
)

__all__ = ("CURVE_BACKLOG",)

DEPTHS = {"tiny": (20, 60), "quick": (250, 1000, 4000), "full": (1000, 10_000, 40_000)}


def _point(
    bench: Bench, redis_url: str, redis_pid: int, queue: _Queue, gateway_url: str, depth: int
) -> dict[str, Any]:
    s = bench.settings
    cmd, out = _submit_command(bench, gateway_url, depth)
    submitted, _ = _run_submitter(cmd, out)
    queued = queue.depth()
    ids = submitted["ids"]
    worker = targets.agentd(bench.workdir, s.server_cpus, redis_url=redis_url)
    with bench.serve(worker, extra_pids=[redis_pid]) as served:
        pids = served.cpu_pids()
        cpu0, ready_at = cpu_seconds(pids), time.time()
        queue.wait_drained(DRAIN_LIMIT_S)
        cpu = cpu_seconds(pids) - cpu0
    rows = queue.records(ids)
    done = [r for r in rows if r[0] == "completed"]
    if len(done) != len(ids):
        raise RuntimeError(f"{len(done)} of {len(ids)} jobs completed at depth {depth}")
    # Its CPU is read once it answers /readyz; it may have started a few jobs by then:
    # the CPU is divided by the jobs started after that instant.
    after = [r for r in done if r[2] >= ready_at]
    first_start = min(r[2] for r in done)
    last_done = max(r[3] for r in done)
    # Each job's wait from the moment the consumer began (queueing before it started
    # is the gateway's doing, not the queue's).
    waits = [(r[2] - max(r[1], first_start)) * 1000.0 for r in done]
    rate = len(done) / (last_done - first_start) if last_done > first_start else math.nan
    return {
        "depth": queued,
        "submitted": len(ids),
        "submit_command": " ".join(cmd),
        "drain_jobs_per_s": round(rate, 1),
        "started_before_ready": len(done) - len(after),
        "cpu_ms_per_job": round(cpu / len(after) * 1000.0, 4) if after else None,
        "wait_p50_ms": round(percentile(waits, 50), 2),
        "wait_max_ms": round(max(waits), 2),
        "predicted_max_wait_ms": round(len(done) / rate * 1000.0, 2) if rate else None,
    }


def run_backlog(bench: Bench) -> None:
    s = bench.settings
    if not have("redis-server"):
        bench.record.update(status="skipped", reason="redis-server is not installed")
        return
    bench.record["notes"].append(
        "Each point: a gateway agentd (its own partition only; one for the whole sweep) "
        "queues D background jobs (bench.scenarios.jobs submit), then an agentd with 1 "
        "worker (default [jobs]: 32 at once, 4 queue streams) starts and drains them. "
        "Wait = started - max(created, "
        "the first job's start); CPU per job = the draining agentd's and Redis's CPU "
        "from its readiness (/readyz) to the empty queue / the jobs it started after "
        "that instant; drain rate = D / (last "
        "done - first started)."
    )
    points = []
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        queue = _Queue(redis.url)
        gateway = targets.agentd(
            bench.workdir, s.server_cpus, redis_url=redis.url, name="agentd-gateway",
            extra_config=GATEWAY_CONFIG, args=("--partitions", GATEWAY),
        )  # fmt: skip
        try:
            with bench.serve(gateway, extra_pids=[redis.proc.pid]) as front:
                for depth in DEPTHS[s.mode]:
                    url = front.target.url()
                    points.append(_point(bench, redis.url, redis.proc.pid, queue, url, depth))
                    if bench.tick is not None:
                        bench.tick()
        finally:
            queue.close()
    why = (
        "The queue is a Redis stream per shard read with XREADGROUP and each job is "
        "acknowledged with XACK/XDEL, all O(1) in the stream's length: the CPU per job "
        "and the drain rate stay flat as the backlog deepens. The wait is not flat, by "
        "queueing and not by cost: a job waits for the D jobs ahead of it, D / drain rate "
        "(linear in D with slope 1 / rate; `predicted_max_wait_ms` in the points)."
    )
    bench.record["figures"]["points"] = points
    bench.record["figures"]["curves"] = [
        curve("backlog_cost", "Cost per job vs backlog depth", "jobs queued",
              "CPU ms per job; jobs/s drained",
              [series("CPU per job (agentd + Redis)",
                      [(p["depth"], p["cpu_ms_per_job"]) for p in points], "flat"),
               series("jobs/s drained", [(p["depth"], p["drain_jobs_per_s"]) for p in points],
                      "flat")], why),
        curve("backlog_wait", "Enqueue-to-start wait vs backlog depth", "jobs queued",
              "wait, ms",
              [series("wait p50", [(p["depth"], p["wait_p50_ms"]) for p in points], "linear"),
               series("wait max", [(p["depth"], p["wait_max_ms"]) for p in points], "linear"),
               series("D / drain rate", [(p["depth"], p["predicted_max_wait_ms"])
                                         for p in points], "linear")], why),
    ]  # fmt: skip


CURVE_BACKLOG = Scenario(
    "curve-backlog",
    "cost curve: background jobs' enqueue-to-start wait, CPU per job and drain rate vs "
    "the backlog's depth",
    run_backlog,
    lambda s: {"tiny": 10.0, "quick": 30.0, "full": 150.0}[s.mode],
    default=False,
)
