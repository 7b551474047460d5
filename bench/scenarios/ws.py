"""WebSocket scenarios: chat turns over N connections, and idle connections' memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from .. import targets
from ..measure import Bench, Served
from ..procstat import rss_bytes
from ..settings import Settings
from ..stats import ratio
from .common import Scenario, compare
from .common import run_seconds as _secs

__all__ = ("WS_IDLE", "WS_TURNS")

IDLE_PROCS = 4  # client processes for ws-idle, each on its own 127.0.0.x source address


def _target(bench: Bench, name: str) -> Any:
    if name == "agentd":
        return targets.agentd(bench.workdir, bench.settings.server_cpus)
    return targets.aiohttp_baseline(bench.workdir, bench.settings.server_cpus)


def run_turns(bench: Bench) -> None:
    bench.record.setdefault("notes", []).append(
        "Each connection sends hello, then turns back to back: message -> deltas -> done "
        "(agentd stores each turn in the connection's session, in memory). The aiohttp "
        "baseline answers with the same frames (a delta per word of the message, as the "
        "echo agent sends them) and no work behind them: it is also the WebSocket "
        "client's ceiling."
    )
    for name in ("agentd", "aiohttp"):
        with bench.serve(_target(bench, name)) as served:
            bench.ws_turns(served, "/v1/ws", concurrency=bench.settings.main_concurrency)
    compare(bench, baselines=("aiohttp",))


WS_TURNS = Scenario(
    "ws-turns",
    "WebSocket /v1/ws: N connections x chat turns back to back (echo agent)",
    run_turns,
    lambda s: _secs(s, 2, 2),
)


def steady_rss(served: Served, samples: int = 5) -> float:
    values = []
    for _ in range(samples):
        values.append(rss_bytes(served.target.pids()))
        time.sleep(0.1)
    return sum(values) / len(values)


def _idle(bench: Bench, served: Served, count: int) -> dict[str, Any]:
    s = bench.settings
    procs = 1 if s.mode == "tiny" else IDLE_PROCS
    settle = 0.3 if s.mode == "tiny" else 2.0
    sources = ",".join(f"127.0.0.{2 + i}" for i in range(procs))
    time.sleep(settle)
    before = steady_rss(served)
    cmd = targets.pinned(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "ws-idle",
            "--url",
            served.target.url("/v1/ws"),
            "--connections",
            str(count),
            "--procs",
            str(procs),
            "--sources",
            sources,
            "--hold",
            "300",
        ],
        s.load_cpus,
    )
    out = bench.workdir / f"ws-idle-{served.target.name}.json"
    errors = out.with_suffix(".stderr")
    started = time.monotonic()
    with open(errors, "w") as err:  # a file, not a pipe: it cannot fill up and block
        proc = subprocess.Popen(
            [*cmd, "--out", str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdin is not None and proc.stdout is not None
    line = proc.stdout.readline()
    opened_at = time.monotonic()
    if not line.startswith("open "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"ws-idle client failed: {line} {errors.read_text()[-2000:]}")
    opened = int(line.split()[1])
    time.sleep(settle)
    after = steady_rss(served)
    proc.stdin.write("close\n")
    proc.stdin.flush()
    if proc.wait(timeout=120) != 0:
        raise RuntimeError(f"ws-idle client failed: {errors.read_text()[-2000:]}")
    summary = json.loads(out.read_text())
    per_conn = (after - before) / opened if opened else None
    return {
        "target": served.target.name,
        "command": " ".join(cmd),
        "asked": count,
        "open": opened,
        "errors": summary["errors"],
        "client_procs": procs,
        "open_s": round(opened_at - started, 2),
        "connect_ms": summary["connect_ms"],
        "rss_before_mb": round(before / 2**20, 2),
        "rss_after_mb": round(after / 2**20, 2),
        "rss_per_conn_kb": round(per_conn / 1024, 2) if per_conn is not None else None,
    }


def run_idle(bench: Bench) -> None:
    count = bench.settings.ws_idle
    bench.record.setdefault("notes", []).append(
        f"Asks for {count} idle connections (each sends hello and gets ready, so agentd "
        f"binds a session and watches it), from {IDLE_PROCS} client processes on source "
        f"addresses 127.0.0.2-{1 + IDLE_PROCS}. One server process holds them all, so its "
        f"open-file limit caps the count. RSS per connection = (RSS with them open - RSS "
        f"before) / open."
    )
    figures: dict[str, Any] = {}
    for name in ("agentd", "aiohttp"):
        with bench.serve(_target(bench, name)) as served:
            figures[name] = _idle(bench, served, count)
        if bench.tick is not None:
            bench.tick()
    bench.record["figures"] = figures
    mine, base = figures["agentd"], figures["aiohttp"]
    bench.record["ratios"] = [
        {
            "metric": "rss_per_conn_kb",
            "unit": "KiB/connection",
            "higher_is_better": False,
            "concurrency": mine["open"],
            "label": "idle",
            "target": "agentd",
            "baseline": "aiohttp",
            "value": mine["rss_per_conn_kb"],
            "baseline_value": base["rss_per_conn_kb"],
            "ratio": ratio(mine["rss_per_conn_kb"], base["rss_per_conn_kb"]),
        }
    ]


def _idle_estimate(s: Settings) -> float:
    return 2 * (s.ws_idle / 2000.0 + 6.0)


WS_IDLE = Scenario(
    "ws-idle",
    "as many idle WebSocket connections as one server process allows: server RSS per connection",
    run_idle,
    _idle_estimate,
)
