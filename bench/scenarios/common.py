"""What scenarios share: the registry entry, request bodies, what is installed, ratios."""

from __future__ import annotations

import importlib.util
import json
import shutil
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..measure import Bench
from ..settings import Settings
from ..stats import ratio

__all__ = (
    "CHAT",
    "HIT_CHAT",
    "METRICS",
    "SESSION_CHAT",
    "STREAM_CHAT",
    "Scenario",
    "compare",
    "create_sessions",
    "have",
    "ratio_row",
    "run_seconds",
    "run_value",
)

CHAT = '{"model":"echo","messages":[{"role":"user","content":"hello there"}]}'
# temperature 0: agentd's default cache mode ("deterministic") caches it.
HIT_CHAT = '{"model":"echo","messages":[{"role":"user","content":"hello there"}],"temperature":0}'
STREAM_CHAT = '{"model":"echo","messages":[{"role":"user","content":"hello there"}],"stream":true}'
# %s is replaced by a session id, rotated per request by wrk's Lua.
SESSION_CHAT = (
    '{"model":"echo","messages":[{"role":"user","content":"hello there"}],"session_id":"%s"}'
)


@dataclass(frozen=True)
class Scenario:
    """One named scenario: what it measures, how to run it, and how long it takes."""

    name: str
    summary: str
    run: Callable[[Bench], None]
    estimate: Callable[[Settings], float]
    default: bool = True


def have(what: str) -> bool:
    """Whether a program (wrk, nginx, redis-server) or Python package is available."""
    if what in ("fastapi", "uvicorn", "matplotlib"):
        return importlib.util.find_spec(what) is not None
    return shutil.which(what) is not None or (what == "nginx" and shutil.which("/usr/sbin/nginx"))


def run_seconds(settings: Settings, runs: int, starts: int = 1) -> float:
    """Estimated wall time of ``runs`` measurements and ``starts`` server starts."""
    return runs * (settings.duration + settings.warmup + 0.4) + starts * 1.0


def create_sessions(base_url: str, count: int) -> list[str]:
    """``count`` sessions created with ``POST /v1/sessions``; their ids."""
    ids = []
    for _ in range(count):
        request = urllib.request.Request(
            base_url + "/v1/sessions",
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            ids.append(json.loads(response.read())["id"])
    return ids


METRICS = (
    ("rps", "req/s", True),
    ("server_cpu_s_per_1k", "CPU s/1k req", False),
    ("p99", "p99 ms", False),
)


def run_value(run: dict[str, Any], metric: str) -> float | None:
    if metric in ("p50", "p99"):
        return (run.get("latency_ms") or {}).get(metric)
    return run.get(metric)


def ratio_row(
    metric: str, unit: str, better: bool, target: str, baseline: str, label: str,
    concurrency: int, value: Any, baseline_value: Any, runs: Iterable[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """One row of a scenario's ratios: ``value`` over ``baseline_value``, with the runs
    behind them (their failed requests: such a ratio is no result; and the most CPU other
    processes used during any of them)."""
    runs = list(runs)
    return {
        "metric": metric,
        "unit": unit,
        "higher_is_better": better,
        "concurrency": concurrency,
        "label": label,
        "target": target,
        "baseline": baseline,
        "value": value,
        "baseline_value": baseline_value,
        "ratio": ratio(value, baseline_value),
        "errors": sum(run.get("error_count") or 0 for run in runs),
        "other_cpu": max((run.get("other_cpu_util") or 0.0 for run in runs), default=0.0),
    }


def compare(bench: Bench, agentd: str = "agentd", baselines: tuple[str, ...] = ()) -> None:
    """Ratios of every ``agentd`` run to each baseline's run at the same concurrency and
    label: req/s (higher is better for agentd), CPU per request and p99 (lower is)."""
    runs = bench.record.get("runs", [])
    out = bench.record.setdefault("ratios", [])
    for mine in (r for r in runs if r["target"] == agentd):
        for base in baselines:
            theirs = next(
                (
                    r
                    for r in runs
                    if r["target"] == base
                    and r["concurrency"] == mine["concurrency"]
                    and r.get("label") == mine.get("label")
                ),
                None,
            )
            if theirs is None:
                continue
            for metric, unit, higher_better in METRICS:
                a, b = run_value(mine, metric), run_value(theirs, metric)
                if metric == "rps" and mine.get("method") == "WS":
                    unit = "turns/s"
                elif metric == "server_cpu_s_per_1k" and mine.get("method") == "WS":
                    unit = "CPU s/1k turns"
                label, conns = mine.get("label", ""), mine["concurrency"]
                row = ratio_row(metric, unit, higher_better, agentd, base, label, conns, a, b,
                                (mine, theirs))  # fmt: skip
                out.append(row)
