"""The ``replica-reads`` bench scenario, tiny: it measures both layouts on real servers and
reports their ratio, each read counted on the server that answered it."""

from __future__ import annotations

from pathlib import Path

from .test_bench import run_tiny


def test_bench_tiny_replica_reads_measures_replicas_against_the_master_alone(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results"
    results, _ = run_tiny("replica-reads", out, 240)
    (scenario,) = results["scenarios"]
    assert scenario["name"] == "replica-reads" and scenario["status"] == "ok"
    rounds = scenario["figures"]["rounds"]
    for run in rounds["master_only"]:
        assert run["reads"] > 0
        assert run["served_by"] == {"master": run["reads"], "replicas": 0}
    # Reads go to the replicas while the checks find them fresh (on a busy machine a
    # late check may send a few to the master meanwhile).
    assert all(run["served_by"]["replicas"] > 0 for run in rounds["replicas"])
    ratio, master_cpu = scenario["ratios"]
    assert (ratio["target"], ratio["baseline"]) == ("replicas", "master-only")
    assert ratio["ratio"] == round(ratio["value"] / ratio["baseline_value"], 3)
    # The second ratio: the master's CPU per 1,000 reads, replicas reading vs not.
    assert master_cpu["metric"] == "master_cpu_ms_per_1k_reads"
    assert master_cpu["higher_is_better"] is False
