"""A master killed -9 under mixed load with durable acknowledgements (``redis.wait_replicas``),
for the Sentinel and Redis Cluster failover tests: the load of :mod:`.cluster_load`,
the kill, the promotion, the dead server brought back as a replica (so that the new
master has a replica to confirm its writes again), and what the store kept afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from .cluster_load import ClusterLoad
from .procs import AgentdProcess, RedisServer
from .test_cluster_failover import check_watchers, create_sessions, lost_acks
from .waiting import wait_until

__all__ = (
    "DURABLE_CODES",
    "REDIS_TIMEOUT_S",
    "Failover",
    "assert_durable",
    "durable_config",
    "fail_over",
    "linked_replica",
    "stored_histories",
)

# What a turn may be answered instead of 200 while its master is replaced: unreachable,
# or applied on a master that has no replica yet to confirm it (never acknowledged).
DURABLE_CODES = {(503, "store_unavailable"), (503, "store_not_durable")}
WARM_JOBS = 5


@dataclass
class Failover:
    """When each step happened (monotonic seconds)."""

    killed_at: float
    promoted_at: float
    rejoined_at: float

    def figures(self, load: ClusterLoad, lost: int) -> dict[str, Any]:
        durable_again = max(
            (r.ended for r in load.failures() if r.started >= self.killed_at),
            default=self.killed_at,
        )
        return load.figures() | {
            "kill_to_promotion_s": round(self.promoted_at - self.killed_at, 2),
            "kill_to_replica_back_s": round(self.rejoined_at - self.killed_at, 2),
            "kill_to_last_failure_s": round(durable_again - self.killed_at, 2),
            "acked": sum(map(len, load.acked.values())),
            "jobs_sent": sum(1 for r in load.requests if r.kind == "job"),
            "acked_lost": lost,
        }


async def fail_over(
    load: ClusterLoad,
    kill: Callable[[], None],
    promoted: Callable[[], object],
    rejoin: Callable[[], None],
    limit: float = 60.0,
) -> Failover:
    """Sessions created, the load started and warmed up; then ``kill`` (the master,
    -9), ``promoted`` (waits for its replica to take over), ``rejoin`` (waits for the
    dead server to be back as the new master's replica); returns once every session
    had turns acknowledged again after that, with the load stopped."""
    await create_sessions(load, load.sids)
    await load.start()
    # Some jobs accepted before the kill too (they must finish as well).
    await wait_until(lambda: all(load.ok_since(s, 0) >= 3 for s in load.sids)
                     and len(load.jobs) >= WARM_JOBS, 30, "warm-up")  # fmt: skip
    killed_at = time.monotonic()
    kill()
    await asyncio.to_thread(promoted)
    promoted_at = time.monotonic()
    await asyncio.to_thread(rejoin)
    rejoined_at = time.monotonic()
    await wait_until(lambda: all(load.ok_since(s, rejoined_at) >= 3 for s in load.sids), limit,
                     "every session to have turns acknowledged again")  # fmt: skip
    await load.stop()
    return Failover(killed_at, promoted_at, rejoined_at)


async def stored_histories(load: ClusterLoad) -> dict[str, list[tuple[int, str]]]:
    """Every session's stored messages, read again on a 503 (a worker that met the
    failover late may still fail the shard fast for ``redis.down_retry``)."""

    async def read(sid: str) -> list[tuple[int, str]] | None:
        try:
            return await load.history(sid)
        except AssertionError:
            return None

    return {
        sid: await wait_until(lambda sid=sid: read(sid), 30, f"the history of {sid}")
        for sid in load.sids
    }


# A wait below the call's timeout (the configuration requires it), with room for a
# replica's answer on a loaded machine.
REDIS_TIMEOUT_S = 2.0
WAIT_TIMEOUT_MS = 1000

CONFIG = """
[server]
workers = 2
turn_timeout = 30.0
[redis]
cluster = {cluster}
urls = {urls}
timeout = {timeout}
down_retry = 0.5
wait_replicas = {wait_replicas}
wait_timeout_ms = {wait_timeout_ms}
[jobs]
lease_s = 2.0
# Attempts that meet the failover (or a master with no replica yet) count: enough of
# them to span its window.
max_attempts = 10
[[backends]]
name = "echo"
type = "echo"
[[backends]]
name = "slow"
type = "echo"
tokens_per_s = 20.0
[[agents]]
name = "echo"
backend = "echo"
[[agents]]
name = "slow"
backend = "slow"
"""


def durable_config(urls: list[str], wait_replicas: int, cluster: bool) -> str:
    return CONFIG.format(
        cluster=str(cluster).lower(), urls=json.dumps(urls), timeout=REDIS_TIMEOUT_S,
        wait_replicas=wait_replicas, wait_timeout_ms=WAIT_TIMEOUT_MS,
    )  # fmt: skip


def linked_replica(replica: RedisServer, master: RedisServer) -> bool:
    """``replica`` replicates ``master`` and its link is up."""
    with redis.Redis(port=replica.port, socket_timeout=5) as client:
        info = client.info("replication")
    return (
        info.get("role") == "slave"
        and int(info.get("master_port", 0)) == master.port
        and info.get("master_link_status") == "up"
    )


async def assert_durable(
    proc: AgentdProcess, workers: set[int], load: ClusterLoad, failover: Failover, what: str
) -> None:
    """What wait_replicas promises across the failover, checked; the figures printed."""
    stored = await stored_histories(load)
    missing = lost_acks(load, stored)
    figures = failover.figures(load, missing)
    print(f"\n{what} figures:", json.dumps(figures))
    assert missing == 0, figures
    for failed in load.failures():
        assert (failed.status, failed.code) in DURABLE_CODES, failed
    # Nothing hung: each answer within a call's timeout or two (a wait included).
    assert all(r.seconds < 3 * REDIS_TIMEOUT_S for r in load.requests), figures
    assert proc.proc.poll() is None and proc.worker_pids() == workers, "a worker restarted"
    await check_watchers(load)
    ends = await load.job_ends(limit=60.0)
    assert set(ends.values()) == {"completed"}, ends
