"""``store-ops``: bench/store_ops.py as a scenario (Redis round trips, one server vs 3 shards)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from ..measure import Bench
from ..targets import pinned
from .common import Scenario, have

__all__ = ("STORE_OPS",)


def run_store_ops(bench: Bench) -> None:
    s = bench.settings
    if not have("redis-server"):
        bench.record["status"] = "skipped"
        bench.record["reason"] = "redis-server is not installed"
        return
    seconds = max(0.5, s.duration / 2)
    out = bench.workdir / "store-ops.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.store_ops",
        "--seconds",
        f"{seconds:g}",
        "--concurrency",
        str(s.main_concurrency),
    ]
    full = pinned([*cmd, "--out", str(out)], s.all_cpus)
    done = subprocess.run(full, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"store_ops failed: {done.stderr[-2000:]}")
    results = json.loads(out.read_text())
    bench.record["command"] = shlex.join(cmd)
    bench.record["notes"] = [
        "The store layer alone (no HTTP): Redis round trips per operation, counted on the "
        "servers, and load+append turns/s from one process; 3 shards reported as a ratio "
        "to one server in the same run. Not pinned beyond the harness's CPUs."
    ]
    bench.record["figures"] = {
        "round_trips": {name: st["round_trips"] for name, st in results["single"]["ops"].items()},
        "single_turns_per_s": results["single"]["throughput"]["turns_per_s"],
        "sharded3_turns_per_s": results["sharded-3"]["throughput"]["turns_per_s"],
    }
    bench.record["ratios"] = [
        {
            "metric": "turns_per_s",
            "unit": "turns/s",
            "higher_is_better": True,
            "concurrency": s.main_concurrency,
            "label": "store",
            "target": "sharded-3",
            "baseline": "single",
            "value": results["sharded-3"]["throughput"]["turns_per_s"],
            "baseline_value": results["single"]["throughput"]["turns_per_s"],
            "ratio": results["sharded_vs_single"],
        }
    ]
    if bench.tick is not None:
        bench.tick()


STORE_OPS = Scenario(
    "store-ops",
    "the store layer alone: Redis round trips per operation and load+append turns/s, "
    "one Redis vs 3 shards (bench/store_ops.py)",
    run_store_ops,
    lambda s: 2 * (max(0.5, s.duration / 2) + 2.0) + 2.0,
)
