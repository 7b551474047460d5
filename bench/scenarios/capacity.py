"""Capacity scenarios: open-loop max rate, added latency (workers scaling is in
``scaling.py``, the soak in ``soak.py``)."""

from __future__ import annotations

from typing import Any

from .. import targets
from ..measure import Bench
from ..settings import Settings
from ..stats import RateSearch, ratio
from .common import CHAT, STREAM_CHAT, Scenario, compare
from .common import run_seconds as _secs

__all__ = ("ADDED_LATENCY", "OPEN_LOOP")

# -- open-loop --------------------------------------------------------------------------


def _max_rate(bench: Bench, served: Any, path: str) -> dict[str, Any]:
    s = bench.settings
    probe = bench.http(
        served,
        path,
        method="POST",
        body=CHAT,
        concurrency=s.main_concurrency,
        generator="python",
        seconds=s.open_duration,
        label="capacity probe",
    )
    search = RateSearch(probe["rps"], s.p99_bound_ms, s.rate_fractions, s.bisections)
    while (rate := search.next_rate()) is not None:
        run = bench.http(
            served,
            path,
            method="POST",
            body=CHAT,
            rate=rate,
            generator="python",
            concurrency=256,
            seconds=s.open_duration,
            label=f"rate {rate:g}",
        )
        run["limited_by"] = "offered rate (open loop)"
        lag = (run.get("lag_ms") or {}).get("p99")
        if lag is not None and lag > s.p99_bound_ms / 10:
            run["limited_by"] = "generator (send lag p99 over a tenth of the bound)"
        search.record(rate, run["latency_ms"]["p99"], run["error_count"])
        search.trials[-1]["generator_lag_p99_ms"] = lag
        search.trials[-1]["other_cpu_util"] = run.get("other_cpu_util")
    lagged = sum(1 for t in search.trials if (t["generator_lag_p99_ms"] or 0) > s.p99_bound_ms / 10)
    return {
        "capacity_rps": probe["rps"],
        "max_rate": search.best,
        "bound_ms": s.p99_bound_ms,
        "trials_lagged_by_generator": lagged,
        "trials": search.trials,
    }


def run_open_loop(bench: Bench) -> None:
    s = bench.settings
    bench.record.setdefault("notes", []).append(
        f"Constant arrival rate from the Python generator; latency counted from each "
        f"request's intended send time. A closed-loop probe measures capacity, then rates "
        f"climb {', '.join(f'{f:g}' for f in s.rate_fractions)} x capacity until p99 passes "
        f"{s.p99_bound_ms:g} ms (or any error), then bisect {s.bisections} time(s)."
    )
    figures: dict[str, Any] = {}
    for name in ("agentd", "aiohttp"):
        cm = (targets.agentd if name == "agentd" else targets.aiohttp_baseline)(
            bench.workdir, s.server_cpus
        )
        with bench.serve(cm) as served:
            figures[name] = _max_rate(bench, served, "/v1/chat/completions")
    bench.record["figures"] = figures
    a, b = figures["agentd"]["max_rate"], figures["aiohttp"]["max_rate"]
    bench.record["ratios"] = [
        {
            "metric": "max_rate",
            "unit": f"req/s at p99 <= {s.p99_bound_ms:g} ms",
            "higher_is_better": True,
            "concurrency": 0,
            "label": "open loop",
            "target": "agentd",
            "baseline": "aiohttp",
            "value": a,
            "baseline_value": b,
            "ratio": ratio(a, b),
            "other_cpu": max(r.get("other_cpu_util") or 0.0 for r in bench.record["runs"]),
        }
    ]


def _open_estimate(s: Settings) -> float:
    trials = 1 + len(s.rate_fractions) + s.bisections
    return 2 * (trials * (s.open_duration + s.warmup + 0.5) + 1.0)


OPEN_LOOP = Scenario(
    "open-loop",
    "the highest constant arrival rate holding p99 under the bound (default 10 ms), "
    "stateless echo chat turn, agentd vs the bare aiohttp handler",
    run_open_loop,
    _open_estimate,
)

# -- added-latency ----------------------------------------------------------------------


def run_added_latency(bench: Bench) -> None:
    s = bench.settings
    bench.record.setdefault("notes", []).append(
        "Concurrency 1, the same streamed request (stream: true): to an OpenAI-compatible "
        "stub directly, and through agentd (openai backend pointed at the stub). The stub "
        f"runs on the load CPUs {s.load_cpus}, as a remote model would be elsewhere."
    )
    runs: dict[str, dict[str, Any]] = {}
    with bench.serve(targets.upstream(bench.workdir, s.load_cpus)) as up:
        runs["upstream"] = bench.http(
            up, "/v1/chat/completions", method="POST", body=STREAM_CHAT, concurrency=1
        )
        cm = targets.agentd(bench.workdir, s.server_cpus, upstream_url=up.target.url("/v1"))
        with bench.serve(cm, side_pids=up.target.pids()) as served:
            runs["agentd"] = bench.http(
                served, "/v1/chat/completions", method="POST", body=STREAM_CHAT, concurrency=1
            )
    direct, via = runs["upstream"]["latency_ms"], runs["agentd"]["latency_ms"]
    bench.record["figures"] = {
        f"added_{p}_ms": round(via[p] - direct[p], 4) for p in ("p50", "p90", "p99")
    }
    compare(bench, baselines=("upstream",))


ADDED_LATENCY = Scenario(
    "added-latency",
    "latency agentd adds to a turn at concurrency 1: through agentd vs calling the "
    "upstream directly",
    run_added_latency,
    lambda s: _secs(s, 2, 2),
)
