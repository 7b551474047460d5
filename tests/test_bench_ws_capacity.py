"""The ws-capacity scenario: its plan for the machine's limits, and a --tiny run's record
(structure and consistency, never times)."""

from __future__ import annotations

from pathlib import Path

from bench.scenarios import SCENARIOS
from bench.scenarios.ws_capacity import COUNTS, HEADROOM, PER_SOURCE, plan

from .test_bench import run_tiny


def test_the_plan_fits_every_process_under_its_open_file_limit() -> None:
    for count, hard in ((35_000, 20_000), (35_000, 1_048_576), (5_000, 4_096), (24, 1_024)):
        layout = plan(count, hard)
        assert count / layout["workers"] <= hard - HEADROOM
        assert count / layout["client_procs"] <= hard - HEADROOM
        assert count / layout["sources"] <= PER_SOURCE
    assert plan(35_000, 20_000)["workers"] == 2  # this machine's limit: two workers
    assert plan(35_000, 1_048_576)["workers"] == 1
    assert COUNTS["full"] == 35_000
    assert "ws-capacity" in SCENARIOS


def test_bench_tiny_ws_capacity_records_connections_fds_and_turn_ratios(tmp_path: Path) -> None:
    results, _ = run_tiny("ws-capacity", tmp_path / "results", 240)
    (record,) = results["scenarios"]
    assert record["name"] == "ws-capacity" and record["status"] == "ok", record
    fig = record["figures"]
    assert fig["open"] == fig["asked"] == COUNTS["tiny"] == fig["server_websockets"]
    assert fig["workers"] == 1
    # One descriptor per open connection, and they are given back once closed.
    assert fig["fds_open"] >= fig["fds_before"] + fig["open"]
    assert fig["fds_after_close"] < fig["fds_open"]
    assert fig["rss_per_conn_kb"] is not None and len(fig["loadavg_open"]) == 3
    runs = record["runs"]
    loaded = [r for r in runs if r["label"] == f"{fig['open']} idle connections"]
    unloaded = [r for r in runs if r["label"].startswith("no idle connections")]
    assert len(loaded) == 3 and len(unloaded) == 2
    for run in runs:
        assert run["concurrency"] == 1 and run["requests"] > 0 and run["error_count"] == 0
    assert fig["turn_p99_ms_runs"]["loaded"] == [r["latency_ms"]["p99"] for r in loaded]
    ratios = {r["metric"]: r for r in record["ratios"]}
    assert set(ratios) == {"p50", "p99", "server_cpu_s_per_1k"}
    assert ratios.pop("server_cpu_s_per_1k")["baseline_value"] > 0
    for q, r in ratios.items():
        assert r["value"] == round(fig["turn_ms_loaded"][q], 4)
        assert r["baseline_value"] == round(fig["turn_ms_unloaded"][q], 4)
        assert abs(r["ratio"] - r["value"] / r["baseline_value"]) < 0.01 * r["ratio"] + 0.001
