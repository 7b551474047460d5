"""The console's bench (``python -m bench.console``): a short run in a real Chromium
against real servers, whose figures are checked for their structure and their sanity
(what each counts, and that each ratio is its two figures' ratio), never for a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import console

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.console", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def ratio_of(figures: dict[str, Any], over: str, under: str) -> float:
    return round(figures[over] / figures[under], 2)


def test_a_short_console_bench_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "console"
    done = run(
        "--runs", "2", "--sessions", "60", "--rate", "20", "--seconds", "1", "--out", str(out)
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert f"written to {out / 'results.json'}" in done.stdout
    assert set(results) == {"cold_load", "sessions_view", "busy_session"}

    cold = results["cold_load"]
    assert cold["runs"] == 2
    assert cold["console_ready_ms"] > 0 and cold["bare_page_ms"] > 0
    assert cold["ratio"] == ratio_of(cold, "console_ready_ms", "bare_page_ms")
    # The page, its scripts and styles: more than a bare page, and nothing fetched twice
    # is counted (a few tens of KB, under a megabyte).
    assert 10_000 < cold["console_bytes_transferred"] < 1_000_000, cold

    view = results["sessions_view"]
    pages = view["first_page_ms"]
    assert set(pages) == {"20", "60"} and all(ms > 0 for ms in pages.values())
    assert view["ratio"] == round(pages["60"] / pages["20"], 2)
    searched = view["agent_search_ms"]  # the first page shown, then the search's
    assert set(searched) == {"20", "60"} and all(ms > 0 for ms in searched.values())
    assert view["agent_search_ratio"] == round(searched["60"] / searched["20"], 2)

    busy = results["busy_session"]
    # Paced for the window and two seconds more, every one sent and the last one shown.
    assert busy["rate_per_s"] == 20.0 and busy["events_sent"] == 60
    assert busy["last_event_shown"] is True
    for lags in (busy["timer_lag_p99_ms"], busy["timer_lag_max_ms"]):
        assert set(lags) == {"quiet", "busy"} and all(v >= 0 for v in lags.values())
    for kind in ("quiet", "busy"):
        assert busy["timer_lag_p99_ms"][kind] <= busy["timer_lag_max_ms"][kind]
    turns = busy["turn_ms"]
    assert turns["quiet"] > 0 and turns["busy"] > 0
    assert turns["ratio"] == ratio_of(turns, "busy", "quiet")


def test_the_console_bench_refuses_a_run_it_cannot_measure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Its main() in this process: the command's own exit (2) and message, without paying
    # a new interpreter's imports (Playwright, agentd) for each refusal.
    for args in (["--sessions", "20"], ["--runs", "0"], ["--rate", "0"]):
        with pytest.raises(SystemExit) as done:
            console.main(args)
        assert done.value.code == 2, args
        assert "must be" in capsys.readouterr().err, args
