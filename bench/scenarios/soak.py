"""``soak``: the mixed load for ``--soak MINUTES`` against 2 workers on Redis.

Chat turns in open loop on 50 sessions, 20 WebSockets doing turns, a background
response a second (``bench/loadgen/mixed.py``, one process on the load CPUs), against
agentd with 2 workers on Redis. While it runs, the RSS of the supervisor, of each worker
and of redis-server (and Redis's own ``used_memory``) is sampled; the figures are their
growth (first tenth of the window against the last), the chat p99 of the first window
against the last, errors by kind, and what was lost: acknowledged turns missing from
their session's history, WebSocket turns without a reply, background responses that
never reached a terminal status.

The chat rate is ``--soak-rate`` turns/s, or half of the capacity that the same turns
reach in closed loop while they fill every session's history first (to
``sessions.max_messages``, so the soak starts with Redis at its steady state).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import targets
from ..measure import Bench, Served
from ..procstat import ProcessRss, children, cpu_seconds, machine_cpu
from ..settings import Settings
from ..stats import growth, ratio
from ..targets import pinned
from .common import Scenario, create_sessions, have

__all__ = ("SOAK",)

SESSIONS = 50
WS_CONNECTIONS = 20
WS_TURNS_PER_S = 2.0  # per connection
BACKGROUND_PER_S = 1.0
PROBE_CONNECTIONS = 32
RATE_SHARE = 0.5  # of the probed capacity, when --soak-rate is not given
SETTLE_S = 60.0  # the longest the driver waits for background responses to end
DRIVER = "bench.loadgen.mixed"
MAX_MESSAGES = 1000  # agentd's default [sessions] max_messages (the config sets none)
TINY_FILL = 5  # turns a session before a tiny soak (a smoke run: its histories stay short)


def _windows(seconds: float) -> tuple[float, float, float, float]:
    """(warm-up, p99 window, history read period, RSS sample period) for a soak."""
    warmup = min(60.0, max(0.2, seconds / 30))
    window = min(60.0, max(1.0, seconds / 20))
    check = min(5.0, max(0.5, seconds / 60))
    sample = min(5.0, max(0.2, seconds / 600))
    return warmup, window, check, sample


def _ids_file(bench: Bench, name: str, ids: list[str]) -> str:
    path = bench.workdir / f"{name}-{time.monotonic_ns()}.txt"
    path.write_text("".join(f"{sid}\n" for sid in ids))
    return str(path)


def _driver(bench: Bench, url: str, sessions: list[str], *args: str) -> list[str]:
    path = _ids_file(bench, "sessions", sessions)
    cmd = [sys.executable, "-m", DRIVER, "--url", url, "--sessions", path, *args]
    return pinned(cmd, bench.settings.load_cpus)


def _drive(
    bench: Bench, served: Served, cmd: list[str], on_start: Any = None, on_end: Any = None
) -> tuple[dict[str, Any], float, float, float, tuple[float, float], tuple[float, float]]:
    """Run the driver; its result, and the server's CPU seconds, wall times and machine
    CPU readings at its ``measure-start`` / ``measure-end`` (or its start and end)."""
    out = bench.workdir / f"mixed-{time.monotonic_ns()}.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    errors = out.with_suffix(".stderr")
    cpu0, t0, box0 = cpu_seconds(served.cpu_pids()), time.monotonic(), machine_cpu()
    cpu1, t1, box1 = cpu0, t0, box0
    with open(errors, "w") as err:  # a file, not a pipe: it cannot fill up and block
        proc = subprocess.Popen(
            [*cmd, "--out", str(out)], stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )
    assert proc.stdout is not None
    ended = False
    for line in proc.stdout:
        if line.startswith("measure-start"):
            cpu0, t0, box0 = cpu_seconds(served.cpu_pids()), time.monotonic(), machine_cpu()
            if on_start is not None:
                on_start()
        elif line.startswith("measure-end"):
            ended = True
            cpu1, t1, box1 = cpu_seconds(served.cpu_pids()), time.monotonic(), machine_cpu()
            if on_end is not None:
                on_end()
    code = proc.wait(timeout=SETTLE_S + 600)
    if not ended:
        cpu1, t1, box1 = cpu_seconds(served.cpu_pids()), time.monotonic(), machine_cpu()
    stderr = errors.read_text(errors="replace")
    errors.unlink()
    if code != 0 or not out.exists():
        raise RuntimeError(f"the soak driver failed ({code}): {stderr[-2000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    return result, cpu1 - cpu0, t0, t1, box0, box1


def _run_record(
    bench: Bench,
    served: Served,
    cmd: list[str],
    result: dict[str, Any],
    measured: tuple[float, float, float, tuple[float, float], tuple[float, float]],
    gen_cpu: float,
) -> dict[str, Any]:
    cpu, t0, t1, box0, box1 = measured
    run = {**result, "generator": "python"}
    run["generator_cpu_util"] = round(gen_cpu / max(t1 - t0, 1e-9), 3)
    bench._noise(run, box0, box1, cpu + gen_cpu, t1 - t0)
    return bench._server_side(served, run, cmd, cpu, t0, t1)


def _fill(bench: Bench, served: Served, sessions: list[str], ws_sessions: list[str]) -> Any:
    """Chat turns on every session, closed loop, until each history is full (tiny runs:
    a few): the capacity probe, and the soak's memory at its steady state from the start."""
    turns = MAX_MESSAGES // 2 if bench.settings.mode != "tiny" else TINY_FILL
    cmd = _driver(
        bench, served.target.url(), sessions,
        "--ws-sessions", _ids_file(bench, "ws-sessions", ws_sessions),
        "--fill", str(turns), "--connections", str(PROBE_CONNECTIONS),
        "--rate", "1", "--duration", "1",
    )  # fmt: skip
    result, cpu, t0, t1, box0, box1 = _drive(bench, served, cmd)
    errors = result["errors"]
    run = {
        "requests": result["requests"],
        "rps": result["rps"],
        "latency_ms": result["latency_ms"],
        "errors": errors,
        "error_count": sum(errors.values()),
        "concurrency": PROBE_CONNECTIONS,
        "path": "/v1/chat/completions",
        "method": "POST",
        "label": f"fill, capacity probe ({turns} turns a session)",
    }
    run = _run_record(bench, served, cmd, run, (cpu, t0, t1, box0, box1), result["cpu_s"])
    return bench._finish(run)


def _labels(served: Served, redis_pid: int) -> dict[str, int]:
    supervisor = served.target.proc.pid
    out = {"supervisor": supervisor, "redis-server": redis_pid}
    for pid in children(supervisor):
        out[f"worker {pid}"] = pid
    return out


def _redis_memory(url: str) -> Any:
    import redis

    client = redis.Redis.from_url(url)

    def used() -> dict[str, float]:
        return {"redis used_memory": int(client.info("memory")["used_memory"]) / 2**20}

    return client, used


def _key_families(client: Any) -> dict[str, tuple[int, int]]:
    """Redis's keys by family (the hash tag in braces elided): (keys, bytes), bytes from
    ``MEMORY USAGE`` (sampled for big streams, so approximate)."""
    keys = list(client.scan_iter(count=1000))
    out: dict[str, tuple[int, int]] = {}
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key)
        for key, usage in zip(batch, pipe.execute(), strict=True):
            family = re.sub(r"\{[^}]*\}", "{}", key.decode(errors="replace"))
            count, size = out.get(family, (0, 0))
            out[family] = (count + 1, size + int(usage or 0))
    return out


def _families_figures(
    start: dict[str, tuple[int, int]], end: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    names = sorted(set(start) | set(end))
    return {
        "redis_keys_start": {n: start.get(n, (0, 0))[0] for n in names},
        "redis_keys_end": {n: end.get(n, (0, 0))[0] for n in names},
        "redis_mb_start": {n: round(start.get(n, (0, 0))[1] / 2**20, 3) for n in names},
        "redis_mb_end": {n: round(end.get(n, (0, 0))[1] / 2**20, 3) for n in names},
    }


def _errors(result: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind in ("chat", "ws", "background"):
        for what, count in result[kind]["errors"].items():
            out[f"{kind}: {what}"] = count
    return out


def _figures(
    s: Settings, result: dict[str, Any], rss: ProcessRss, extra: dict[str, Any]
) -> dict[str, Any]:
    chat, ws, bg, hist = result["chat"], result["ws"], result["background"], result["history"]
    # A WebSocket turn refused with an error frame got its answer; one with neither a
    # done nor an error frame (timed out, connection ended) did not.
    refused = sum(n for kind, n in ws["errors"].items() if kind.startswith("error "))
    window = _windows(s.soak_minutes * 60.0)[1]
    # Whole windows inside the schedule only: a last partial one holds the drain.
    wins = [w for w in chat.get("windows") or [] if w["t"] + window <= result["duration_s"] + 1e-9]
    series = {label: list(points) for label, points in rss.samples.items()}
    workers = sorted(label for label in series if label.startswith("worker "))
    # The workers' sum per sample time (every worker is read in the same sample).
    summed: dict[float, float] = {}
    for label in workers:
        for t, mib in series[label]:
            summed[t] = summed.get(t, 0.0) + mib
    figures: dict[str, Any] = {
        "load": {**extra, "minutes": s.soak_minutes, "chat_rate": result["rate"],
                 "sessions": result["sessions"], "ws_connections": result["ws_connections"],
                 "ws_turns_per_s_each": result["ws_rate_per_connection"],
                 "background_per_s": result["bg_rate"], "workers": 2, "store": "redis"},
        "rss_workers": growth(sorted(summed.items())) if len(workers) == 2 else None,
        "worker_processes_seen": len(workers),
        "worker_restarts": max(0, len(workers) - 2),
        **{f"rss_{label.replace(' ', '_')}": growth(series[label]) for label in workers},
        "rss_supervisor": growth(series.get("supervisor", [])),
        "rss_redis": growth(series.get("redis-server", [])),
        "redis_used_memory": growth(series.get("redis used_memory", [])),
        "chat": {"turns": chat["measured"], "turns_acknowledged": chat["acknowledged"],
                 "per_s": chat["per_s"],
                 "p50_ms": chat["latency_ms"]["p50"], "p99_ms": chat["latency_ms"]["p99"],
                 "p99_first_window_ms": wins[0]["p99"] if wins else None,
                 "p99_last_window_ms": wins[-1]["p99"] if wins else None,
                 "p99_drift": ratio(wins[-1]["p99"], wins[0]["p99"]) if wins else None,
                 "window_s": window, "errors": chat["error_count"]},
        "ws": {"turns_sent": ws["sent"], "replied": ws["acknowledged"], "refused": refused,
               "p99_ms": ws["latency_ms"]["p99"], "errors": ws["error_count"]},
        "background": {"submitted": bg["sent"], "accepted": bg["accepted"],
                       **{f"status {k}": v for k, v in bg["by_status"].items()},
                       "not_terminal": bg["not_terminal"], "errors": bg["error_count"]},
        "losses": {"acknowledged_turns": hist["acknowledged"], "verified": hist["verified"],
                   "lost": hist["lost"], "unverified_trimmed": hist["unverified"],
                   "ws_refused": refused,
                   "ws_unanswered": ws["sent"] - ws["acknowledged"] - refused,
                   "background_not_terminal": bg["not_terminal"]},
        "errors_by_kind": _errors(result),
    }  # fmt: skip
    return figures


def _series(rss: ProcessRss, origin: float) -> dict[str, list[list[float]]]:
    """Each process's samples as ``[seconds since the run's start, MiB]``."""
    return {
        label: [[round(t - origin, 1), round(mib, 2)] for t, mib in points]
        for label, points in rss.samples.items()
    }


def run_soak(bench: Bench) -> None:
    s = bench.settings
    seconds = s.soak_minutes * 60.0
    if seconds <= 0:
        bench.record["status"] = "skipped"
        bench.record["reason"] = "not asked for (--soak MINUTES)"
        return
    if not have("redis-server"):
        bench.record["status"] = "skipped"
        bench.record["reason"] = "the soak runs 2 workers on Redis: redis-server is missing"
        return
    warmup, window, check, sample = _windows(seconds)
    cpus2 = s.all_cpus[:2]
    notes = bench.record.setdefault("notes", [])
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        cm = targets.agentd(bench.workdir, cpus2, workers=2, redis_url=redis.url, name="agentd-2w")
        with bench.serve(cm, workers=2, extra_pids=[redis.proc.pid]) as served:
            url = served.target.url()
            sessions = create_sessions(url, SESSIONS)
            ws_sessions = create_sessions(url, WS_CONNECTIONS)
            probe = _fill(bench, served, sessions, ws_sessions)
            if s.soak_rate > 0:
                rate, source = s.soak_rate, "--soak-rate"
            else:
                rate, source = round(probe["rps"] * RATE_SHARE, 1), f"{RATE_SHARE:g} x capacity"
            cmd = _driver(
                bench, url, sessions,
                "--ws-sessions", _ids_file(bench, "ws-sessions", ws_sessions),
                "--rate", f"{rate:g}", "--duration", f"{seconds:g}", "--warmup", f"{warmup:g}",
                "--ws", str(WS_CONNECTIONS), "--ws-rate", f"{WS_TURNS_PER_S:g}",
                "--bg-rate", f"{BACKGROUND_PER_S:g}", "--window", f"{window:g}",
                "--check-every", f"{check:g}", "--settle", f"{SETTLE_S:g}",
            )  # fmt: skip
            client, used = _redis_memory(redis.url)
            rss = ProcessRss(lambda: _labels(served, redis.proc.pid), sample, used)
            families: list[dict[str, tuple[int, int]]] = []

            def started() -> None:
                rss.start()
                families.append(_key_families(client))

            def ended() -> None:
                rss.stop()
                families.append(_key_families(client))

            try:
                result, cpu, t0, t1, box0, box1 = _drive(
                    bench, served, cmd, on_start=started, on_end=ended
                )
            finally:
                rss.stop()
                client.close()
    chat = result["chat"]
    errors = _errors(result)
    run = {
        "requests": chat["measured"],
        "rps": chat["per_s"],
        "rate": rate,
        "latency_ms": chat["latency_ms"],
        "errors": errors,
        "error_count": sum(errors.values()),
        "concurrency": SESSIONS,
        "path": "/v1/chat/completions + /v1/ws + /v1/responses",
        "method": "POST",
        "label": "soak (mixed)",
        "windows": chat.get("windows"),
    }
    run = _run_record(bench, served, cmd, run, (cpu, t0, t1, box0, box1), result["cpu_s"])
    run["limited_by"] = "offered rate (open loop)"
    bench._finish(run)
    extra = {"rate_source": source, "capacity_rps": probe["rps"],
             "share_of_capacity": ratio(rate, probe["rps"])}  # fmt: skip
    bench.record["figures"] = _figures(s, result, rss, extra)
    if len(families) == 2:
        bench.record["figures"].update(_families_figures(*families))
    bench.record["rss_by_process"] = _series(rss, bench.origin)
    bench.record["lost_examples"] = result["history"]["lost_examples"]
    notes.append(
        f"Mixed load for {s.soak_minutes:g} min after a {warmup:g} s warm-up, against agentd "
        f"with 2 workers on CPUs {cpus2} and Redis on CPU {s.server_cpus}, the driver on CPUs "
        f"{s.load_cpus}: chat turns at {rate:g}/s ({source}; the same turns in closed loop at "
        f"{PROBE_CONNECTIONS} connections, filling the sessions first, reached "
        f"{probe['rps']:g}/s) rotated over "
        f"{SESSIONS} sessions, {WS_CONNECTIONS} WebSockets each doing {WS_TURNS_PER_S:g} "
        f"turns/s on a session of its own, {BACKGROUND_PER_S:g} background response/s. Every "
        f"session's history was first filled with turns to max_messages ({MAX_MESSAGES}; "
        f"tiny runs: {TINY_FILL} turns), so the histories' share of Redis is at its steady "
        "state from the start. Chat latency is counted from each turn's intended send time."
    )
    notes.append(
        "RSS growth: the mean of the first tenth of the samples in the window against the "
        "last tenth, per minute between the two (workers: their sum; each worker by pid, so "
        "a restarted worker shows as a third). Losses: the driver reads every session's "
        f"history every {check:g} s and once at the end, and checks each acknowledged turn "
        "(chat completion or WebSocket done: its seq) against it, the user message with the "
        "turn's own content at seq - 1 and the reply at seq; 'unverified_trimmed' counts "
        "turns trimmed (sessions.max_messages) before they were read, never checked ones. "
        "Every accepted background response is read until its status is terminal."
    )
    notes.append(
        "Redis by key family (hash tags elided; MEMORY USAGE, approximate for streams) at "
        "the window's start and end: a background response keeps its record (agentd:r:{}) "
        "for [jobs] result_ttl_s (7 days), its events (agentd:r:{}:ev) for events_ttl_s (a "
        "day) and a session of its own, so those families grow by design during a soak; the "
        "soak's own sessions (their logs trimmed to max_messages) should not."
    )
    losses = bench.record["figures"]["losses"]
    if losses["lost"] or losses["ws_unanswered"] or losses["background_not_terminal"]:
        notes.append(f"LOSSES: {losses}")


def _estimate(s: Settings) -> float:
    seconds = s.soak_minutes * 60.0
    return seconds + _windows(seconds)[0] + s.duration + 12.0


SOAK = Scenario(
    "soak",
    "mixed load for --soak MINUTES (chat turns on 50 sessions, 20 WebSockets, a background "
    "response a second) against 2 workers on Redis: RSS growth of workers and Redis, p99 "
    "drift, errors, losses",
    run_soak,
    _estimate,
    default=False,
)
