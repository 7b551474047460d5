"""``replica-reads``: bench/replica_reads.py as a scenario (state reads on replicas vs the
master only, in the same run)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from ..measure import Bench
from ..settings import Settings
from ..stats import ratio
from ..targets import pinned
from .common import Scenario, have

__all__ = ("REPLICA_READS",)

ROUNDS = 5


def _seconds(s: Settings) -> float:
    return max(0.5, s.duration / 2)


def run_replica_reads(bench: Bench) -> None:
    s = bench.settings
    if not have("redis-server"):
        bench.record["status"] = "skipped"
        bench.record["reason"] = "redis-server is not installed"
        return
    out = bench.workdir / "replica-reads.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.replica_reads",
        "--seconds",
        f"{_seconds(s):g}",
        "--concurrency",
        str(s.main_concurrency),
        "--rounds",
        str(ROUNDS),
    ]
    full = pinned([*cmd, "--out", str(out)], s.all_cpus)
    done = subprocess.run(full, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"replica_reads failed: {done.stderr[-2000:]}")
    results = json.loads(out.read_text())
    bench.record["command"] = shlex.join(cmd)
    bench.record["notes"] = [
        "The store layer alone (no HTTP): 2 processes read 64 shared state documents "
        "(state_get) from a Redis master with 2 replicas, with redis.replica_reads = "
        '["state"] against every read on the master, alternated for '
        f"{ROUNDS} rounds (medians compared). Which server answered is counted on the "
        "servers (INFO commandstats). The readers and the 3 redis-servers share the "
        "harness's CPUs: on 2 cores the replicas compete with the readers for CPU, so "
        "the gain a separate replica host gives is not what this machine can show."
    ]
    master_cpu = {k: results[k]["master_cpu_ms_per_1k"] for k in ("master_only", "replicas")}
    bench.record["figures"] = {
        "master_only_reads_per_s": results["master_only"]["reads_per_s"],
        "replicas_reads_per_s": results["replicas"]["reads_per_s"],
        "master_cpu_ms_per_1k_reads": master_cpu,
        "rounds": results["rounds"],
    }
    bench.record["ratios"] = [
        {
            "metric": "reads_per_s",
            "unit": "reads/s",
            "higher_is_better": True,
            "concurrency": s.main_concurrency,
            "label": "state reads",
            "target": "replicas",
            "baseline": "master-only",
            "value": results["replicas"]["reads_per_s"],
            "baseline_value": results["master_only"]["reads_per_s"],
            "ratio": results["replicas_vs_master_only"],
        },
        {
            "metric": "master_cpu_ms_per_1k_reads",
            "unit": "ms/1k reads",
            "higher_is_better": False,
            "concurrency": s.main_concurrency,
            "label": "master CPU",
            "target": "replicas",
            "baseline": "master-only",
            "value": master_cpu["replicas"],
            "baseline_value": master_cpu["master_only"],
            "ratio": ratio(master_cpu["replicas"], master_cpu["master_only"]),
        },
    ]
    if bench.tick is not None:
        bench.tick()


REPLICA_READS = Scenario(
    "replica-reads",
    'shared state reads (state_get) with redis.replica_reads = ["state"] on a master '
    "with 2 replicas, against every read on the master (bench/replica_reads.py)",
    run_replica_reads,
    lambda s: 2 * ROUNDS * (_seconds(s) + 4.0) + 3.0,
)
