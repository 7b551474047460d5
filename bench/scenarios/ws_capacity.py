"""ws-capacity: many idle WebSockets held by one agentd instance, and what they cost a
turn on another connection.

One run, one server: a turn's latency on a single connection with no idle connections
open, then N idle WebSockets (hello, ready, then silence, answering the server's pings)
from several client processes on source addresses 127.0.0.x, the same turn latency with
them open (twice), and once more after they closed. Recorded: server RSS per idle
connection, its open files, the p50/p99 ratios loaded / unloaded, and the load average.

A process holds at most its hard ``RLIMIT_NOFILE`` descriptors (agentd and the load
generator raise their soft limit to it). When N does not fit in one worker under that
limit, the instance runs as many workers as it takes (Redis mode, as any multi-worker
instance): one instance, one port, its workers sharing the connections via SO_REUSEPORT.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import targets
from ..measure import Bench, Served
from ..settings import Settings
from ..stats import ratio
from .common import Scenario, have
from .ws import steady_rss

__all__ = ("WS_CAPACITY",)

# Idle connections per mode; the target is the full figure.
COUNTS = {"full": 35_000, "quick": 5_000, "tiny": 24}
# Descriptors a worker keeps besides its WebSockets (listeners, Redis, logs, the loop).
HEADROOM = 1_000
# Client connections per generator process, and per source address (a loopback source
# has about 28,000 ephemeral ports: net.ipv4.ip_local_port_range).
PER_PROC = 9_000
PER_SOURCE = 20_000
# Turn-latency runs: before the idle connections open, with them open, after they closed
# (tiny: one, two, one).
PROBES = {"before": 2, "open": 3, "after": 1}
CLOSE_LIMIT_S = 120.0


def _hard_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1_000_000 if hard == resource.RLIM_INFINITY else hard


def plan(count: int, hard: int) -> dict[str, int]:
    """Workers and client processes for ``count`` idle connections under ``hard`` fds."""
    per_worker = max(1, hard - HEADROOM)
    procs = max(1, math.ceil(count / min(PER_PROC, per_worker)))
    return {
        "workers": max(1, math.ceil(count / per_worker)),
        "client_procs": procs,
        "sources": max(1, math.ceil(count / PER_SOURCE), min(procs, 4)),
    }


def _fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def _server_websockets(served: Served) -> int | None:
    """Open WebSockets as the instance counts them (every worker, from /metrics)."""
    status, _, body = targets.http_get(served.target.url("/metrics"), timeout=30)
    found = re.search(rb"^agentd_websocket_connections (\S+)$", body, re.M)
    return int(float(found.group(1))) if status == 200 and found else None


def _probe(bench: Bench, served: Served, label: str) -> dict[str, Any]:
    """Turns back to back on one connection (one generator process)."""
    s = bench.settings
    cmd = bench._loadgen("ws-turns", served.target.url("/v1/ws"), 1)
    cmd[cmd.index("--procs") + 1] = "1"
    full = targets.pinned(cmd, s.load_cpus)
    result = bench._quietest(lambda: bench._run_python(served, full))
    result.update(concurrency=1, path="/v1/ws", method="WS", label=label)
    return bench._finish(result)


def _open_idle(
    bench: Bench, served: Served, count: int, layout: dict[str, int]
) -> tuple[subprocess.Popen[str], int, float, Path]:
    """Start the idle clients; once they all said hello, how many are open."""
    sources = ",".join(f"127.0.0.{2 + i}" for i in range(layout["sources"]))
    cmd = targets.pinned(
        [sys.executable, "-m", "bench.loadgen", "ws-idle",
         "--url", served.target.url("/v1/ws"), "--connections", str(count),
         "--procs", str(layout["client_procs"]), "--sources", sources, "--hold", "900"],
        bench.settings.load_cpus,
    )  # fmt: skip
    out = bench.workdir / "ws-capacity-idle.json"
    errors = out.with_suffix(".stderr")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    started = time.monotonic()
    with open(errors, "w") as err:  # a file, not a pipe: it cannot fill up and block
        proc = subprocess.Popen(
            [*cmd, "--out", str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("open "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"ws-idle client failed: {line} {errors.read_text()[-2000:]}")
    bench.record["idle_command"] = " ".join(cmd)
    return proc, int(line.split()[1]), time.monotonic() - started, out


def _close_idle(proc: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    assert proc.stdin is not None
    proc.stdin.write("close\n")
    proc.stdin.flush()
    if proc.wait(timeout=CLOSE_LIMIT_S) != 0:
        raise RuntimeError(f"ws-idle client failed: {out.with_suffix('.stderr').read_text()}")
    return json.loads(out.read_text())


def _wait_fds(served: Served, at_most: int) -> int:
    """The server's descriptors once the closed connections are gone (bounded)."""
    deadline = time.monotonic() + CLOSE_LIMIT_S
    while (fds := _fds(served.target.pids())) > at_most and time.monotonic() < deadline:
        time.sleep(0.2)
    return fds


def _p(run: dict[str, Any], q: str) -> float:
    return float(run["latency_ms"][q])


def run_capacity(bench: Bench) -> None:
    s = bench.settings
    count = COUNTS[s.mode]
    hard = _hard_nofile()
    layout = plan(count, hard)
    if layout["workers"] > 1 and not have("redis-server"):
        bench.record["status"] = "skipped"
        bench.record["reason"] = "more than one worker needs Redis: redis-server is missing"
        return
    bench.record.setdefault("notes", []).append(
        f"{count} idle WebSockets (hello, then silence) from {layout['client_procs']} client "
        f"processes on {layout['sources']} source address(es) 127.0.0.2+; the open-file hard "
        f"limit here is {hard}, so the instance runs {layout['workers']} worker(s). A turn's "
        "latency on one other connection (back to back, echo agent): with no idle "
        "connections (before they open and after they close), and with them open; the "
        "ratio is the median of the loaded runs' percentile over the unloaded runs'. RSS "
        "per connection = (instance RSS with them open - before) / open, all processes of "
        "the instance."
    )
    with contextlib.ExitStack() as stack:
        redis_url, extra = None, []
        if layout["workers"] > 1:
            # On every CPU, with the workers it serves.
            redis = stack.enter_context(targets.redis(bench.workdir, s.all_cpus))
            redis_url, extra = redis.url, [redis.proc.pid]
        cm = targets.agentd(
            bench.workdir, s.all_cpus if layout["workers"] > 1 else s.server_cpus,
            workers=layout["workers"], redis_url=redis_url,
        )  # fmt: skip
        served = stack.enter_context(bench.serve(cm, layout["workers"], extra))
        time.sleep(0.3 if s.mode == "tiny" else 2.0)
        pids = served.target.pids
        fds_before, rss_before = _fds(pids()), steady_rss(served)
        probes = {k: 1 if s.mode == "tiny" and k != "open" else n for k, n in PROBES.items()}
        unloaded = [_probe(bench, served, "no idle connections") for _ in range(probes["before"])]
        proc, opened, open_s, out = _open_idle(bench, served, count, layout)
        try:
            time.sleep(0.3 if s.mode == "tiny" else 3.0)
            rss_open, fds_open = steady_rss(served), _fds(pids())
            idle_held = _server_websockets(served)
            load_open = os.getloadavg()
            label = f"{opened} idle connections"
            loaded = [_probe(bench, served, label) for _ in range(probes["open"])]
            still_open, still_held = _fds(pids()), _server_websockets(served)
        finally:
            summary = _close_idle(proc, out)
        fds_after = _wait_fds(served, fds_before + max(16, count // 100))
        unloaded += [
            _probe(bench, served, "no idle connections, after") for _ in range(probes["after"])
        ]

    # Medians of the runs' percentiles: one noisy run (other work on the machine) moves
    # neither side.
    base = {q: statistics.median(_p(r, q) for r in unloaded) for q in ("p50", "p99")}
    held = {q: statistics.median(_p(r, q) for r in loaded) for q in ("p50", "p99")}
    per_conn = (rss_open - rss_before) / opened if opened else None
    bench.record["figures"] = {
        "asked": count,
        "open": opened,
        "errors": summary["errors"],
        "workers": layout["workers"],
        "client_procs": layout["client_procs"],
        "sources": layout["sources"],
        "nofile_hard": hard,
        "open_s": round(open_s, 2),
        "connect_ms": summary["connect_ms"],
        "rss_before_mb": round(rss_before / 2**20, 2),
        "rss_open_mb": round(rss_open / 2**20, 2),
        "rss_per_conn_kb": round(per_conn / 1024, 2) if per_conn is not None else None,
        "server_websockets": idle_held,  # the idle ones (the probe's had closed)
        "server_websockets_after_probes": still_held,
        "fds_before": fds_before,
        "fds_open": fds_open,
        "fds_open_after_probes": still_open,
        "fds_after_close": fds_after,
        "loadavg_open": [round(x, 2) for x in load_open],
        "turn_ms_unloaded": base,
        "turn_ms_loaded": held,
        "turn_p99_ms_runs": {
            "unloaded": [_p(r, "p99") for r in unloaded],
            "loaded": [_p(r, "p99") for r in loaded],
        },
    }
    bench.record["ratios"] = [
        {
            "metric": q,
            "unit": f"{q} ms",
            "higher_is_better": False,
            "concurrency": 1,
            "label": f"turn beside {opened} idle",
            "target": "agentd",
            "baseline": "agentd, no idle connections",
            "value": round(held[q], 4),
            "baseline_value": round(base[q], 4),
            "ratio": ratio(held[q], base[q]),
        }
        for q in ("p50", "p99")
    ]
    # The instance's CPU per turn (every worker: the idle connections' heartbeats too).
    cpu = [
        statistics.median(r["server_cpu_s_per_1k"] or 0.0 for r in runs)
        for runs in (loaded, unloaded)
    ]
    bench.record["ratios"].append(
        {
            "metric": "server_cpu_s_per_1k",
            "unit": "CPU s/1k turns",
            "higher_is_better": False,
            "concurrency": 1,
            "label": f"turn beside {opened} idle",
            "target": "agentd",
            "baseline": "agentd, no idle connections",
            "value": round(cpu[0], 5),
            "baseline_value": round(cpu[1], 5),
            "ratio": ratio(cpu[0], cpu[1]),
        }
    )


def _estimate(s: Settings) -> float:
    count = COUNTS[s.mode]
    probes = sum(PROBES.values()) * (s.duration + s.warmup + 1.0)
    return probes + count / 1500.0 + count / 5000.0 + (3.0 if s.mode == "tiny" else 12.0)


WS_CAPACITY = Scenario(
    "ws-capacity",
    "35,000 idle WebSockets on one instance (5,000 --quick): server RSS and fds per "
    "connection, and a turn's p50/p99 on another connection vs none open",
    run_capacity,
    _estimate,
)
