"""The benchmark harness: its statistics, its load generator's open loop, and a smoke run.

No timing assertions: the open-loop tests only check *which clock* latency is counted
from (a forced stall must be charged to every request scheduled behind it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen.common import Spec
from bench.loadgen.http import run_http
from bench.loadgen.httpconn import encode_request, parse_response
from bench.loadgen.mcp import run_mcp_calls
from bench.loadgen.mixed import Mix, MixSpec, _Ack, _History
from bench.scenarios.capacity import ORDERS
from bench.schema import load_schema, validate
from bench.stats import (
    RateSearch,
    growth,
    latencies_from_schedule,
    percentile,
    ratio,
    schedule,
    summarize,
    windows,
)
from bench.summary import flag_generator_limits
from bench.targets import mcp_tools
from bench.wrk import lua_script, parse_output

ROOT = Path(__file__).resolve().parent.parent

# -- statistics -------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99.9) == 7.0


def test_percentile_never_invents_a_value() -> None:
    values = [1.0, 2.0, 10.0, 1000.0]
    for p in (1, 25, 50, 75, 90, 99, 99.9):
        assert percentile(values, p) in values


def test_percentile_of_nothing_is_nan_and_bad_p_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_reports_milliseconds() -> None:
    summary = summarize([0.001] * 98 + [0.010, 0.100])
    assert summary["p50"] == 1.0
    assert summary["p99"] == 10.0
    assert summary["p99.9"] == 100.0
    assert summary["max"] == 100.0
    assert summarize([])["p99"] is None


def test_ratio_is_value_over_baseline_and_none_when_undefined() -> None:
    assert ratio(10.0, 4.0) == 2.5
    assert ratio(1.0, 3.0) == 0.333
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(math.nan, 1.0) is None


def test_schedule_is_a_constant_rate() -> None:
    times = schedule(1000.0, 0.01, start=5.0)
    assert len(times) == 10
    assert times[0] == 5.0
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {0.001}
    assert schedule(0.0, 1.0) == []


def test_open_loop_latency_counts_the_queue_a_stall_causes() -> None:
    """One connection, a request every 1 ms, 0.1 ms each, but the 10th stalls 50 ms:
    every request scheduled during the stall is late, and is charged for it."""
    intended = schedule(1000.0, 0.1)
    free_at, sent, completed = 0.0, [], []
    for i, planned in enumerate(intended):
        start = max(planned, free_at)
        service = 0.050 if i == 10 else 0.0001
        free_at = start + service
        sent.append(start)
        completed.append(free_at)
    open_loop = latencies_from_schedule(intended, completed)
    closed_loop = [done - start for start, done in zip(sent, completed, strict=True)]
    assert sum(lat > 0.010 for lat in closed_loop) == 1  # coordinated omission hides it
    assert sum(lat > 0.010 for lat in open_loop) >= 35
    assert percentile(sorted(open_loop), 50) > percentile(sorted(closed_loop), 50)
    with pytest.raises(ValueError):
        latencies_from_schedule([0.0], [])


def test_windows_give_rate_and_p99_per_window() -> None:
    ends = [0.1, 0.2, 1.1, 1.2, 1.3]
    lats = [0.001, 0.002, 0.010, 0.020, 0.030]
    out = windows(ends, lats, 1.0)
    assert [w["requests"] for w in out] == [2, 3]
    assert out[1]["p99"] == 30.0


def test_growth_compares_the_first_tenth_with_the_last_per_minute() -> None:
    # 20 samples a minute apart: 100 MiB for the first 10 minutes, then 110 MiB.
    samples = [(60.0 * i, 100.0 if i < 10 else 110.0) for i in range(20)]
    out = growth(samples)
    assert out["samples"] == 20 and out["start_mb"] == 100.0 and out["end_mb"] == 110.0
    # The tenths' middles are 0.5 and 18.5 minutes: 10 MiB over 18 minutes.
    assert out["mb_per_min"] == round(10.0 / 18.0, 4)
    assert out["pct"] == 10.0
    assert growth([(0.0, 5.0)])["mb_per_min"] is None
    assert growth([])["start_mb"] is None


def test_soak_history_check_tells_verified_lost_and_trimmed_turns_apart() -> None:
    mix = Mix(MixSpec(host="127.0.0.1", port=1, sessions=("s",), rate=1.0, duration=1.0))
    hist = _History(last_read=12)
    hist.seen = {
        3: ("user", "soak 1", 0.0),
        4: ("assistant", "soak 1", 0.0),
        5: ("user", "someone else", 0.0),
        6: ("assistant", "x", 0.0),
        11: ("user", "soak 9", 0.0),
        12: ("assistant", "soak 9", 0.0),
    }
    hist.gaps = [(7, 10)]  # trimmed before the reader got there
    hist.pending = [
        _Ack(4, "soak 1"),  # stored as acknowledged
        _Ack(6, "soak 2"),  # its seq holds another turn: lost
        _Ack(8, "soak 3"),  # inside the trimmed stretch: not checked, not lost
        _Ack(12, "soak 9"),
        _Ack(12, "soak 9"),  # the same seq acknowledged twice: the second is lost
        _Ack(20, "soak 4"),  # not read yet: still waiting
    ]
    mix._check(hist, now=1.0)
    assert mix.verify["verified"] == 2
    assert mix.verify["lost"] == 2 and mix.verify["unverified"] == 1
    assert [a.seq for a in hist.pending] == [20]
    assert {e["content"] for e in mix.lost_examples} == {"soak 2", "soak 9"}
    mix._check(hist, now=1000.0)  # read messages no turn claimed are forgotten in time
    assert not hist.seen


def test_rate_search_finds_the_highest_rate_under_the_bound_in_bounded_steps() -> None:
    def p99_at(rate: float) -> float:
        return 1.0 if rate <= 5000 else 50.0

    fractions = (0.3, 0.5, 0.7, 0.85, 1.0, 1.2)
    search = RateSearch(capacity=6000.0, bound_ms=10.0, fractions=fractions, bisections=2)
    while (rate := search.next_rate()) is not None:
        search.record(rate, p99_at(rate), errors=0)
    assert search.best is not None and 4200.0 <= search.best <= 5000.0
    assert len(search.trials) <= len(fractions) + 2
    # Errors fail a rate even with a good p99.
    failing = RateSearch(1000.0, 10.0, fractions=(0.5,), bisections=0)
    assert failing.record(500.0, 1.0, errors=1) is False
    assert failing.best is None


# -- the load generator -----------------------------------------------------------------


def test_http_response_framing() -> None:
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert parse_response(whole + b"HTTP/1.1") == (200, len(whole))
    assert parse_response(whole[:-1]) is None
    chunked = b"HTTP/1.1 201 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert parse_response(chunked) == (201, len(chunked))
    assert parse_response(chunked[:-2]) is None
    request = encode_request("POST", "127.0.0.1:1", "/x", b"{}")
    assert request.endswith(b"Content-Length: 2\r\n\r\n{}")


async def test_open_loop_generator_charges_a_stall_to_every_request_behind_it() -> None:
    """A real open-loop run on one connection against a server that stalls once."""
    answered: list[float] = []  # when the server answered each request (perf_counter)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            if len(answered) == 4:
                await asyncio.sleep(0.3)  # the stall under test, not a wait
            answered.append(time.perf_counter())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spec = Spec(
        mode="http",
        host="127.0.0.1",
        port=port,
        connections=1,
        duration=1.0,
        warmup=0.0,
        rate=100.0,
    )
    try:
        rec = await run_http(spec, 0, lambda: None)
    finally:
        server.close()
    latencies = list(rec.latencies)
    assert len(latencies) == len(answered) == 100 and not rec.errors
    # One connection: requests are sent, answered and recorded in schedule order.
    intended = [rec.start + i / spec.rate for i in range(100)]
    # The stall holds up the requests scheduled while it lasts (about 30) ...
    assert sum(t < answered[4] for t in intended[5:]) >= 10
    # ... and each request is charged from its intended send time, not from when the
    # connection was free to send it: at least until the server answered it.
    for i, latency in enumerate(latencies):
        assert latency >= answered[i] - intended[i] - 1e-9, i


async def test_mcp_call_generator_counts_only_the_answers_it_expects(tmp_path: Path) -> None:
    """The direct MCP calls of ``tool-loop`` against the bench's real tool server: an
    answer other than the expected text, or a tool error, is an error, not a call."""

    async def until_counted(spec: Spec, arguments: dict[str, Any], expect: str | None) -> Any:
        # A call that ends after the window is not counted, so on a saturated machine a
        # short window may count none: the window doubles (0.3 s up to ~40 s) until one is.
        for _ in range(8):
            rec = await run_mcp_calls(spec, 0, lambda: None, arguments, expect)
            if rec.latencies or rec.errors:
                return rec
            spec = Spec(**{**spec.__dict__, "duration": spec.duration * 2})
        return rec

    with mcp_tools(tmp_path, []) as server:
        spec = Spec(mode="mcp-calls", host="127.0.0.1", port=server.port, path="/mcp",
                    connections=3, duration=0.3, warmup=0.0, tool="echo")  # fmt: skip
        good = await until_counted(spec, {"text": "hi"}, "hi")
        wrong = await until_counted(spec, {"text": "hi"}, "bye")
        refused = await until_counted(Spec(**{**spec.__dict__, "tool": "nope"}), {}, None)
    assert len(good.latencies) > 0 and good.errors == {}
    assert len(wrong.latencies) == 0 and wrong.errors.get("unexpected result", 0) > 0
    assert len(refused.latencies) == 0 and sum(refused.errors.values()) > 0, refused.errors


def test_wrk_script_and_summary() -> None:
    script = lua_script("POST", '{"session_id":"%s"}', sessions=["a", "b"])
    assert 'local sessions = {"a", "b"}' in script and "request = function()" in script
    assert "wrk.body" not in script
    assert 'wrk.body = [[{"x":1}]]' in lua_script("POST", '{"x":1}')
    # A long string right inside an index needs a space: "[[[" would not parse.
    keyed = lua_script("GET", headers={"Authorization": "Bearer k"})
    assert "wrk.headers[ [[Authorization]] ] = [[Bearer k]]" in keyed
    out = parse_output(
        "Running 1s test\nBENCH-JSON "
        '{"duration_us":2000000,"requests":1000,"bytes":1,"errors":{"connect":0,"read":0,'
        '"write":0,"status":3,"timeout":0},"latency_us":{"p50":500.0,"p90":900.0,'
        '"p99":1500.0,"p99.9":3000.0,"mean":600.0,"max":4000.0}}\n'
    )
    assert out["rps"] == 500.0
    assert out["latency_ms"]["p99"] == 1.5
    assert out["errors"] == {"status": 3} and out["error_count"] == 3


def test_generator_limited_runs_are_flagged() -> None:
    runs = [
        {"generator": "wrk", "rps": 900.0, "limited_by": "server"},
        {"generator": "wrk", "rps": 100.0, "limited_by": "server"},
        {"generator": "python", "rps": 10.0, "limited_by": "generator"},
    ]
    records = [{"runs": runs}]
    flag_generator_limits(records, {"figures": {"wrk": {"rps": 1000.0}}})
    assert [r["generator_limited"] for r in records[0]["runs"]] == [True, False, True]


def test_schema_validator_reports_violations() -> None:
    schema = load_schema()
    assert validate({}, schema)  # everything required is missing
    bad_run = {"target": "x", "command": "c", "generator": "ab", "concurrency": -1}
    problems = validate(bad_run, schema["$defs"]["run"], schema)
    assert any("generator" in p for p in problems)
    assert any("below 0" in p for p in problems)
    assert any("missing required 'rps'" in p for p in problems)


# -- smoke: the real command, tiny -------------------------------------------------------


def run_tiny(scenario: str, out: Path, timeout: float) -> tuple[Any, str]:
    """``python -m bench SCENARIO --tiny``: its results (checked against the schema) and
    its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", scenario, "--tiny", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    assert validate(results, load_schema()) == []
    return results, done.stderr


def test_bench_tiny_run_writes_results_that_match_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "results"
    results, stderr = run_tiny("http-hello", out, 120)
    assert results["mode"] == "tiny"
    (hello,) = results["scenarios"]
    assert hello["name"] == "http-hello" and hello["status"] == "ok"
    assert {run["target"] for run in hello["runs"]} == {"agentd", "aiohttp"}
    for run in hello["runs"]:
        assert run["requests"] > 0 and run["error_count"] == 0
        assert run["server_cpu_s_per_1k"] is not None and run["server_peak_rss_mb"] > 0
    assert {r["baseline"] for r in hello["ratios"]} == {"aiohttp"}
    assert "http-hello" in (out / "report.md").read_text()
    assert "elapsed" in stderr  # the progress line


def test_bench_tiny_added_latency_alternates_the_order_and_reports_medians_of_rounds(
    tmp_path: Path,
) -> None:
    results, _ = run_tiny("added-latency", tmp_path / "results", 120)
    (record,) = results["scenarios"]
    assert record["status"] == "ok", record.get("reason")
    runs = record["runs"]
    # Each round is one run of each target, in ORDERS' order: each first in half.
    assert [(run["target"], run["label"]) for run in runs] == [
        (name, f"round {i}, {'first' if k == 0 else 'second'}")
        for i, order in enumerate(ORDERS, 1)
        for k, name in enumerate(order)
    ]
    firsts = [order[0] for order in ORDERS]
    assert firsts.count("agentd") == firsts.count("upstream")
    assert all(run["requests"] > 0 and run["error_count"] == 0 for run in runs)
    figures = record["figures"]
    for p in ("p50", "p90", "p99"):
        added = [
            b["latency_ms"][p] - a["latency_ms"][p]
            for a, b in (sorted(runs[i : i + 2], key=lambda r: r["target"] == "agentd")
                         for i in range(0, len(runs), 2))
        ]  # fmt: skip
        assert list(figures[f"rounds_added_{p}_ms"].values()) == pytest.approx(added, abs=1e-4)
        assert figures[f"added_{p}_ms"] == pytest.approx(statistics.median(added), abs=1e-4)
    rps = {name: [run["rps"] for run in runs if run["target"] == name] for name in firsts}
    (ratio,) = [r for r in record["ratios"] if r["metric"] == "rps"]
    assert (ratio["target"], ratio["baseline"]) == ("agentd", "upstream")
    assert ratio["value"] == statistics.median(rps["agentd"])
    assert ratio["baseline_value"] == statistics.median(rps["upstream"])
    summary = {row["metric"] for row in results["summary"] if row["scenario"] == "added-latency"}
    assert {"added_p50_ms", "added_p99_ms", "rps", "p99"} <= summary


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_bench_tiny_jobs_run_drains_every_job_and_reports_its_ratios(tmp_path: Path) -> None:
    out = tmp_path / "results"
    results, _ = run_tiny("jobs", out, 180)
    (jobs,) = results["scenarios"]
    assert jobs["name"] == "jobs" and jobs["status"] == "ok", jobs.get("reason")
    drains = [run for run in jobs["runs"] if run["label"].startswith("drain")]
    assert [run["target"] for run in drains] == ["agentd-1w", "agentd-2w"]
    for run in drains:
        assert run["requests"] == 200 and run["error_count"] == 0  # every job completed
        assert run["rps"] > 0 and run["latency_ms"]["p50"] is not None
        assert "bench.scenarios.jobs submit" in run["command"]
    chats = {run["label"]: run for run in jobs["runs"] if "chat" in run["label"]}
    assert set(chats) == {"chat, no jobs", "chat + job backlog"}
    assert all(run["requests"] > 0 and run["error_count"] == 0 for run in chats.values())
    assert jobs["figures"]["backlog"]["queued_when_chat_began"] > 0
    assert {(r["metric"], r["baseline"]) for r in jobs["ratios"]} >= {
        ("jobs_per_s", "agentd-1w"),
        ("enqueue_start_p50", "agentd-1w"),
        ("enqueue_start_p99", "agentd-1w"),
        ("rps", "no backlog"),
        ("p99", "no backlog"),
    }
    summary = [row for row in results["summary"] if row["scenario"] == "jobs"]
    assert {b for row in summary for b in row["ratios"]} == {"agentd-1w", "no backlog"}
    assert "chat with job backlog" in (out / "report.md").read_text()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_bench_tiny_chat_hit_measures_one_and_two_workers_against_aiohttp(tmp_path: Path) -> None:
    out = tmp_path / "results"
    results, _ = run_tiny("http-chat-hit", out, 120)
    (hit,) = results["scenarios"]
    assert hit["name"] == "http-chat-hit" and hit["status"] == "ok", hit.get("reason")
    assert [run["target"] for run in hit["runs"]] == [
        "agentd",
        "aiohttp",
        "agentd-2w",
        "aiohttp-2p",
    ]
    for run in hit["runs"]:
        assert run["requests"] > 0 and run["error_count"] == 0
    assert "--workers 2" in hit["server_commands"]["agentd-2w"]
    assert "--processes 2" in hit["server_commands"]["aiohttp-2p"]
    # Both worker counts answered from the cache (each worker warmed: the last is an L1 hit).
    assert hit["cache"] == "hit-l1" and hit["cache_agentd-2w"] == "hit-l1"
    assert set(hit["figures"]["x_cache"]) == {"agentd", "agentd-2w"}
    pairs = {(r["target"], r["baseline"], r["metric"]) for r in hit["ratios"]}
    for target, baseline in (
        ("agentd", "aiohttp"),
        ("agentd-2w", "aiohttp-2p"),
        ("agentd-2w", "agentd-1w"),
    ):
        for metric in ("rps", "server_cpu_s_per_1k", "p99"):
            assert (target, baseline, metric) in pairs
    summary = [row for row in results["summary"] if row["scenario"] == "http-chat-hit"]
    assert {b for row in summary for b in row["ratios"]} == {"aiohttp", "aiohttp-2p", "agentd-1w"}
    assert "÷ aiohttp-2p" in (out / "report.md").read_text()


def test_bench_tiny_tool_loop_measures_turns_with_a_tool_call_against_direct_calls(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results"
    results, _ = run_tiny("tool-loop", out, 180)
    (loop,) = results["scenarios"]
    assert loop["name"] == "tool-loop" and loop["status"] == "ok", loop.get("reason")
    runs = [(run["target"], run["label"], run["concurrency"]) for run in loop["runs"]]
    assert runs == [
        ("mcp-direct", "tool call", 1),
        ("mcp-direct", "tool call", 4),
        ("agentd", "tool turn", 1),
        ("agentd", "tool turn", 4),
        ("agentd-plain", "plain turn", 1),
        ("agentd-plain", "plain turn", 4),
    ]
    for run in loop["runs"]:
        assert run["requests"] > 0 and run["error_count"] == 0, run
    direct = [run for run in loop["runs"] if run["target"] == "mcp-direct"]
    assert all("bench.loadgen mcp-calls" in run["command"] for run in direct)
    assert all("--tool echo" in run["command"] for run in direct)
    turns = [run for run in loop["runs"] if run["target"] == "agentd"]
    assert all('"model":"tooled"' in run["command"] for run in turns)
    # agentd's CPU and the tool server's are told apart; the tool server did work.
    assert all(0 < run["extra_cpu_s"] < run["server_cpu_s"] for run in turns)
    figs = loop["figures"]
    assert figs["turn_check"] == {"status": 200, "content": "echo: hello there", "steps": 2}
    # One call per turn, all answered by the tool (warm-ups and the check included).
    calls = figs["tool_calls_during_load"]
    assert set(calls) == {"ok"} and calls["ok"] >= sum(run["requests"] for run in turns)
    assert figs["added_agentd_cpu_ms_per_tool_call"] > 0
    assert "added_p50_ms_per_tool_call_c1" in figs
    pairs = {(r["baseline"], r["metric"], r["concurrency"]) for r in loop["ratios"]}
    assert pairs == {
        (baseline, metric, c)
        for baseline in ("mcp-direct", "agentd-plain")
        for metric in ("rps", "server_cpu_s_per_1k", "p99")
        for c in (1, 4)
    }
    assert all(r["ratio"] is not None and r["errors"] == 0 for r in loop["ratios"])
    summary = [row for row in results["summary"] if row["scenario"] == "tool-loop"]
    assert {b for row in summary for b in row["ratios"]} == {"mcp-direct", "agentd-plain"}
    assert "mcp-tools" in loop["server_commands"] and "agentd" in loop["server_commands"]
    assert "÷ mcp-direct" in (out / "report.md").read_text()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_bench_fuzz_small_run_reports_outcomes_and_finds_nothing_left() -> None:
    command = [sys.executable, "-m", "bench.fuzz", "--inputs", "400", "--redis", "--seed", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "store: redis (2 workers); seed 3;" in out
    for kind in ("http 200", "http 400 invalid_json", "raw 400", "ws pong", "ws error"):
        assert f"  {kind}" in out, out
    for line in ("5xx answers seen by clients: 0", "5xx counted by the server's metrics: 0",
                 "violations: 0", "worker restarts: 0",
                 "leaked websocket handlers (gauge above baseline): 0", "locked sessions: 0",
                 "turn leases left in redis: 0"):  # fmt: skip
        assert line in out, out
    assert out.rstrip().splitlines()[-1] == "OK"


def test_bench_fuzz_input_is_drawn_again_from_its_seed_and_index() -> None:
    command = [sys.executable, "-m", "bench.fuzz", "--seed", "3", "--only", "17"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first, again = (
        subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        for _ in range(2)
    )
    assert first.returncode == 0 and first.stdout == again.stdout
    assert first.stdout.startswith(("HttpInput(", "RawInput(", "WsInput("))


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_bench_short_soak_runs_the_mixed_load_and_reports_growth_and_losses(
    tmp_path: Path,
) -> None:
    """``--soak 0.1`` (6 s) at a light fixed rate: the whole soak end to end."""
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "soak", "--tiny", "--soak", "0.1", "--soak-rate", "50",
         "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    assert validate(results, load_schema()) == []
    (soak,) = results["scenarios"]
    assert soak["name"] == "soak" and soak["status"] == "ok", soak.get("reason")
    probe, run = soak["runs"]
    assert probe["label"].startswith("fill, capacity probe") and probe["rps"] > 0
    assert run["rate"] == 50 and run["requests"] > 0 and run["error_count"] == 0
    assert "--workers 2" in soak["server_commands"]["agentd-2w"]
    figs = soak["figures"]
    assert figs["load"]["rate_source"] == "--soak-rate" and figs["load"]["sessions"] == 50
    assert figs["worker_processes_seen"] == 2 and figs["worker_restarts"] == 0
    for key in ("rss_workers", "rss_supervisor", "rss_redis", "redis_used_memory"):
        assert figs[key]["samples"] > 1 and figs[key]["start_mb"] > 0, key
        assert figs[key]["mb_per_min"] is not None, key
    assert len([k for k in figs if k.startswith("rss_worker_")]) == 2
    assert {"supervisor", "redis-server"} <= set(soak["rss_by_process"])
    chat, ws, background = figs["chat"], figs["ws"], figs["background"]
    assert chat["turns"] > 0 and chat["p99_first_window_ms"] is not None
    assert chat["p99_drift"] is not None
    assert ws["turns_sent"] > 0 and ws["replied"] == ws["turns_sent"]
    assert background["accepted"] > 0 and background["status completed"] == background["accepted"]
    losses = figs["losses"]
    # Every acknowledged turn (chat and WebSocket) was found in its session's history.
    assert losses["acknowledged_turns"] == chat["turns_acknowledged"] + ws["replied"]
    assert losses["verified"] == losses["acknowledged_turns"] > 0
    assert losses["lost"] == losses["ws_unanswered"] == losses["background_not_terminal"] == 0
    assert losses["ws_refused"] == 0
    assert figs["errors_by_kind"] == {}
    # Redis by key family at the window's start and end: the soak's sessions are all there.
    assert figs["redis_keys_start"]["agentd:s:{}:log"] >= 70
    assert figs["redis_mb_end"]["agentd:s:{}:log"] > 0
    rows = {row["figure"]: row for row in results["summary"] if row["scenario"] == "soak"}
    assert rows["work lost or unanswered"]["value"] == 0
    assert rows["agentd workers RSS growth"]["value"] is not None
    assert "redis-server RSS growth" in rows
    assert "work lost or unanswered" in (out / "report.md").read_text()
