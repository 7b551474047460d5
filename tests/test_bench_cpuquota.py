"""The benchmark's CPU quotas (``bench.cpuquota``) and its per-worker connection count.

The quota test runs a real busy loop under a quota and reads its CPU time from ``/proc``:
it waits for a fixed amount of CPU to be used, and the wall time that took says the rate.
The bounds are wide (a loaded machine may give the loop less than its quota, never
more), and the unbounded rate of a busy loop is far outside them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cpuquota
from bench.procstat import connections, cpu_seconds

from .test_bench import run_tiny
from .waiting import wait_until_sync

WHY_NOT = cpuquota.unavailable()
needs_quota = pytest.mark.skipif(WHY_NOT is not None, reason=f"no CPU quotas here: {WHY_NOT}")

BUSY = [sys.executable, "-c", "while True: pass"]


def _cgroup_of(pid: int, hierarchy: cpuquota.Hierarchy) -> str:
    """The process's cgroup path in the quota hierarchy (``/`` for its root)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (hierarchy.version == 2 and controllers == "") or (
            hierarchy.version == 1 and "cpu" in controllers.split(",")
        ):
            return path
    raise AssertionError(f"no cpu cgroup line for {pid}")


@needs_quota
def test_a_busy_loop_under_a_quota_uses_about_its_quota_and_the_group_goes_after() -> None:
    hierarchy = cpuquota.find_hierarchy()
    assert hierarchy is not None
    proc = subprocess.Popen(BUSY)
    try:
        with cpuquota.quota(0.2, [proc.pid], prefix="bench-test") as held:
            group = held.groups[proc.pid]
            assert _cgroup_of(proc.pid, hierarchy).endswith(group.name)
            cpu0, t0 = cpu_seconds([proc.pid]), time.monotonic()
            # 0.4 CPU seconds: about 2 s at 0.2 CPU, 0.4 s for the loop left unbounded.
            wait_until_sync(lambda: cpu_seconds([proc.pid]) - cpu0 >= 0.4, limit=60)
            rate = (cpu_seconds([proc.pid]) - cpu0) / (time.monotonic() - t0)
            periods, throttled = held.throttling()[proc.pid]
        assert 0.08 <= rate <= 0.3, rate
        assert periods > 0 and throttled > periods / 4, (periods, throttled)
        # Released: the process is back in the root group and the group is gone.
        assert _cgroup_of(proc.pid, hierarchy) == "/"
        assert not group.exists()
    finally:
        proc.kill()
        proc.wait()


def test_connections_counts_each_process_s_end_of_the_port_s_connections() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted = [server.accept()[0] for _ in clients]
        try:
            # This process holds both ends; only the accepted ones have the port as theirs.
            assert connections([os.getpid()], port) == {os.getpid(): 3}
            accepted.pop().close()
            assert connections([os.getpid()], port) == {os.getpid(): 2}
        finally:
            for sock in clients + accepted:
                sock.close()


@needs_quota
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_bench_tiny_workers_scaling_bounds_every_worker_and_measures_the_control(
    tmp_path: Path,
) -> None:
    results, _ = run_tiny("workers-scaling", tmp_path / "results", 240)
    (scaling,) = results["scenarios"]
    assert scaling["status"] == "ok", scaling.get("reason")
    bounded = [run for run in scaling["runs"] if run["label"]]
    assert [(run["target"], run["label"]) for run in bounded] == [
        ("agentd-1w", "0.4 CPU each"),
        ("agentd-2w", "0.4 CPU each"),
        ("agentd-1w", "0.8 CPU"),
        ("aiohttp-1p", "0.4 CPU each"),
        ("aiohttp-2p", "0.4 CPU each"),
        ("aiohttp-1p", "0.8 CPU"),
    ]
    for run in bounded:
        assert run["requests"] > 0 and run["error_count"] == 0
        workers = run["workers"]
        assert len(workers) == (2 if run["target"].endswith("2w") or "2p" in run["target"] else 1)
        # No process ran past its quota (a 10 ms period lets it overshoot by little).
        quota = 0.8 if run["label"] == "0.8 CPU" else 0.4
        assert all(w["quota"] == quota and w["cpu_util"] <= quota + 0.15 for w in workers)
        assert len({w["pid"] for w in workers}) == len(workers)
        assert all(0 <= w["runqueue_wait_share"] and w["connections"] >= 0 for w in workers)
    pairs = {(r["target"], r["baseline"], r["label"]) for r in scaling["ratios"]}
    assert ("agentd-2w", "agentd-1w", "0.4 CPU each") in pairs
    assert ("aiohttp-2p", "aiohttp-1p", "0.4 CPU each") in pairs
    assert ("agentd-2w", "agentd-1w", "") in pairs
    split = "2 at 0.4 CPU ÷ 1 at 0.8 CPU"
    assert ("agentd-2w", "agentd-1w-double", split) in pairs
    assert ("aiohttp-2p", "aiohttp-1p-double", split) in pairs
    bounded_figures = scaling["figures"]["bounded"]
    (split_rps,) = [
        r for r in scaling["ratios"] if r["label"] == split and r["target"] == "agentd-2w"
        and r["metric"] == "rps"
    ]  # fmt: skip
    assert bounded_figures["agentd_2w_over_1w_double"] == split_rps["ratio"]
    assert split_rps["baseline_value"] == bounded[2]["rps"]
    # Every group made for the run is gone (each is named after its worker's pid).
    hierarchy = cpuquota.find_hierarchy()
    assert hierarchy is not None
    for run in bounded:
        for w in run["workers"]:
            assert not list(hierarchy.root.glob(f"bench-scaling-*-{w['pid']}"))
