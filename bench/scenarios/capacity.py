"""Capacity scenarios: open-loop max rate, added latency (workers scaling is in
``scaling.py``, the soak in ``soak.py``)."""

from __future__ import annotations

from statistics import median
from typing import Any

from .. import targets
from ..measure import Bench
from ..settings import Settings
from ..stats import RateSearch, ratio
from .common import CHAT, METRICS, STREAM_CHAT, Scenario, ratio_row, run_value
from .common import run_seconds as _secs

__all__ = ("ADDED_LATENCY", "OPEN_LOOP", "ORDERS")

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


# Rounds of one direct run and one run through agentd, in the order A B, B A, B A, A B:
# which server is asked first in a round moves its figures by tens of µs (the CPUs'
# idle states, warm caches), so each goes first in half the rounds, and a drift of the
# machine over the scenario falls on both alike.
ORDERS = (("upstream", "agentd"), ("agentd", "upstream"), ("agentd", "upstream"),
          ("upstream", "agentd"))  # fmt: skip
PERCENTILES = ("p50", "p90", "p99")


def run_added_latency(bench: Bench) -> None:
    s = bench.settings
    bench.record.setdefault("notes", []).append(
        "Concurrency 1, the same streamed request (stream: true): to an OpenAI-compatible "
        "stub directly, and through agentd (openai backend pointed at the stub), both "
        f"serving for the whole scenario. The stub runs on the load CPUs {s.load_cpus}, "
        f"as a remote model would be elsewhere. {len(ORDERS)} rounds, each one run of "
        "each, in the order A B, B A, B A, A B (each first in half the rounds: the order "
        "within a round moves its figures); a round's added latency is its agentd "
        "percentile minus its direct one, and the figures are the medians over the "
        "rounds. The ratios compare the medians of the rounds' runs."
    )
    rounds: list[dict[str, dict[str, Any]]] = []
    with bench.serve(targets.upstream(bench.workdir, s.load_cpus)) as up:
        cm = targets.agentd(bench.workdir, s.server_cpus, upstream_url=up.target.url("/v1"))
        with bench.serve(cm, side_pids=up.target.pids()) as via:
            served = {"upstream": up, "agentd": via}
            for i, order in enumerate(ORDERS, 1):
                rounds.append(
                    {
                        name: bench.http(
                            served[name],
                            "/v1/chat/completions",
                            method="POST",
                            body=STREAM_CHAT,
                            concurrency=1,
                            label=f"round {i}, {'first' if k == 0 else 'second'}",
                        )
                        for k, name in enumerate(order)
                    }
                )
    added = [
        {p: r["agentd"]["latency_ms"][p] - r["upstream"]["latency_ms"][p] for p in PERCENTILES}
        for r in rounds
    ]
    bench.record["figures"] = {
        **{f"added_{p}_ms": round(median(a[p] for a in added), 4) for p in PERCENTILES},
        # Each round's, by the target asked first in it.
        **{
            f"rounds_added_{p}_ms": {
                f"round {i} ({order[0]} first)": round(a[p], 4)
                for i, (order, a) in enumerate(zip(ORDERS, added, strict=True), 1)
            }
            for p in PERCENTILES
        },
    }
    bench.record["ratios"] = [_median_ratio(rounds, *m) for m in METRICS]


def _median_ratio(
    rounds: list[dict[str, dict[str, Any]]], metric: str, unit: str, better: bool
) -> dict[str, Any]:
    """agentd's median over the rounds against the direct calls' median."""
    mine = median(run_value(r["agentd"], metric) for r in rounds)
    theirs = median(run_value(r["upstream"], metric) for r in rounds)
    label = f"median of {len(rounds)} rounds"
    runs = [run for r in rounds for run in r.values()]
    return ratio_row(metric, unit, better, "agentd", "upstream", label, 1, mine, theirs, runs)


ADDED_LATENCY = Scenario(
    "added-latency",
    "latency agentd adds to a turn at concurrency 1: through agentd vs calling the "
    "upstream directly",
    run_added_latency,
    lambda s: _secs(s, 2 * len(ORDERS), 2),
)
