"""http-chat-durable: what ``redis.wait_replicas = 1`` costs a chat turn with a session,
as a ratio to the same agentd with ``wait_replicas = 0``, in the same run, on the same
master and replica."""

from __future__ import annotations

import os

from tests.waitrepl_procs import ReplicatedRedis

from .. import targets
from ..measure import Bench, Served
from .common import SESSION_CHAT, Scenario, compare, create_sessions, have
from .common import run_seconds as _secs

__all__ = ("HTTP_CHAT_DURABLE",)

BASELINE = "agentd-wait0"


def run_chat_durable(bench: Bench) -> None:
    s = bench.settings
    if not have("redis-server") or s.generator != "wrk" or not have("wrk"):
        bench.record["status"] = "skipped"
        bench.record["reason"] = "needs redis-server and wrk (sessions rotate in wrk's Lua)"
        return
    bench.record.setdefault("notes", []).append(
        "Each request is a turn on one of 4 x concurrency sessions (rotated per request), "
        "on a Redis master with one replica (--replicaof), both pinned with the server. "
        f"'agentd' answers a turn once the replica confirmed it (wait_replicas = 1: WAIT "
        f"pipelined with the turn's write); '{BASELINE}' is the same agentd with "
        "wait_replicas = 0, on the same master and replica (set in each server's "
        "environment: AGENTD_REDIS__WAIT_REPLICAS=1 or 0). Server CPU includes both "
        "redis-server processes."
    )
    c = s.main_concurrency
    pair = ReplicatedRedis(bench.workdir / "durable")
    try:
        redis_pids = [pair.master.proc.pid, pair.replica.proc.pid]
        if s.server_cpus and hasattr(os, "sched_setaffinity"):
            for pid in redis_pids:
                os.sched_setaffinity(pid, set(s.server_cpus))
        for name, replicas in ((BASELINE, 0), ("agentd", 1)):
            env = {"AGENTD_REDIS__WAIT_REPLICAS": str(replicas)}
            target = targets.agentd(
                bench.workdir, s.server_cpus, redis_url=pair.master.url, name=name, env=env
            )
            with bench.serve(target, extra_pids=redis_pids) as served:
                # One client: the latency a turn gains; many: the throughput it costs.
                for concurrency in sorted({1, c}):
                    _measure(bench, served, concurrency)
    finally:
        pair.close()
    compare(bench, baselines=(BASELINE,))


def _measure(bench: Bench, served: Served, concurrency: int) -> None:
    sessions = create_sessions(served.target.url(), 4 * concurrency)
    bench.http(
        served,
        "/v1/chat/completions",
        method="POST",
        body=SESSION_CHAT,
        sessions=sessions,
        concurrency=concurrency,
    )


HTTP_CHAT_DURABLE = Scenario(
    "http-chat-durable",
    "POST /v1/chat/completions with a session on a Redis master with one replica: "
    "redis.wait_replicas = 1 (each turn answered once the replica has it) against "
    "wait_replicas = 0",
    run_chat_durable,
    lambda s: _secs(s, 4, 2) + 2.0,
    default=False,
)
