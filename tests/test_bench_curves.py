"""The cost curves: how a series is judged flat or linear, and a tiny run of each curve
scenario against real servers (agentd, redis-server) that writes plots and a report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.curves import fit, series
from bench.schema import load_schema, validate

ROOT = Path(__file__).resolve().parent.parent
CURVES = ("curve-history", "curve-l1", "curve-redis-memory", "curve-ws-memory",
          "curve-fanout", "curve-backlog")  # fmt: skip


def test_fit_finds_the_line_and_its_fit() -> None:
    slope, intercept, r2 = fit([(1, 5.0), (10, 23.0), (100, 203.0)])
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(3.0)
    assert r2 == pytest.approx(1.0)
    slope, intercept, _ = fit([(10, 20.0), (100, 200.0)], through_zero=True)
    assert (slope, intercept) == (pytest.approx(2.0), 0.0)


def test_a_straight_line_is_linear_and_a_parabola_is_not() -> None:
    line = series("line", [(x, 3.0 + 2.0 * x) for x in (10, 100, 1000)], "linear")
    assert line["shown"] is True and line["per_unit_ratio"] == pytest.approx(1.0)
    # Per unit of size it costs ten times more at 1,000 than at 100.
    parabola = series("p", [(x, 1.0 + x * x / 100) for x in (10, 100, 1000)], "linear")
    assert parabola["shown"] is False and parabola["per_unit_ratio"] > 5
    assert "not linear" in parabola["verdict"]


def test_flat_is_judged_from_the_largest_point_over_the_smallest() -> None:
    flat = series("f", [(10, 1.0), (1000, 1.3), (100, 0.9)], "flat")
    assert flat["shown"] is True and flat["last_over_first"] == pytest.approx(1.3)
    assert [p[0] for p in flat["points"]] == [10, 100, 1000]  # sorted by size
    halves = series("h", [(10, 800.0), (1000, 350.0)], "flat")  # a throughput that fell
    assert halves["shown"] is False
    grows = series("g", [(10, 1.0), (100, 4.0), (1000, 30.0)], "flat")
    assert grows["shown"] is False and "not flat" in grows["verdict"]
    unknown = series("u", [(10, 1.0), (100, None)], "flat")  # a missing point is dropped
    assert unknown["shown"] is None
    with pytest.raises(ValueError):
        series("x", [(1, 1.0)], "quadratic")


def test_bench_tiny_cost_curves_run_against_real_servers(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", *CURVES, "--tiny", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert validate(results, load_schema()) == []
    report = (out / "report.md").read_text()
    by_name = {r["name"]: r for r in results["scenarios"]}
    assert set(by_name) == set(CURVES)
    for name, record in by_name.items():
        assert record["status"] == "ok", (name, record.get("reason"))
        for c in record["figures"]["curves"]:
            assert c["series"] and all(len(s["points"]) >= 2 for s in c["series"]), (name, c)
            assert f"curve_{c['name']}.png" in report
            assert (out / f"curve_{c['name']}.png").stat().st_size > 0
    history = by_name["curve-history"]["figures"]["points"]
    assert {p["agent"] for p in history} == {"echo-window", "echo-whole"}
    assert all(p["turns"] > 0 for p in history)
    assert all(p["l1_hits"] == p["requests"] for p in by_name["curve-l1"]["figures"]["points"])
    memory = by_name["curve-redis-memory"]["figures"]
    _check_memory_curve(memory)
    fanout = by_name["curve-fanout"]["figures"]["points"]
    assert {(p["instances"], p["watchers"]) for p in fanout} == {(1, 1), (1, 10), (2, 1), (2, 10)}
    for p in by_name["curve-backlog"]["figures"]["points"]:
        assert p["jobs"] > 0 and p["agentd_cpu_ms_per_job"] > 0


def _check_memory_curve(memory: dict) -> None:
    """Each point grew, by about the same bytes per session (per message) at every
    count (a wide factor: the key table grows in doublings), and nothing was lost."""
    points = memory["points"]
    assert [p["count"] for p in points["sessions"]] == [300, 1000]
    assert [p["count"] for p in points["messages"]] == [1000, 3000]
    for kind, (low, high) in {"sessions": (150, 1500), "messages": (60, 600)}.items():
        each = [p["bytes_each"] for p in points[kind]]
        assert all(low < e < high for e in each), (kind, points[kind])
        assert max(each) / min(each) < 2.0, (kind, points[kind])
    stored = memory["stored"]
    made = 100 + 1000 + 10  # warm-up, the curve's, the messages' sessions
    assert stored["sessions"] == stored["found"] == stored["indexed"] == made, stored
    assert stored["agent_indexed"] == made, stored
    assert stored["messages"] == 100 * 10 + 3000, stored
