"""``python -m bench [SCENARIO ...] [--quick] [--soak MINUTES]``: run the suite, write results.

Each run writes ``bench/results/<UTC timestamp>/`` (or ``--out``): ``results.json``
(validated against ``bench/results.schema.json``), ``report.md`` and the PNG plots.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .machine import ROOT, machine_facts
from .measure import Bench
from .procstat import wait_quiet
from .progress import Progress, clock
from .report import write_report
from .scenarios import CEILING, SCENARIOS, Scenario
from .scenarios.common import have
from .schema import load_schema, validate
from .settings import Settings, settings_for
from .summary import flag_generator_limits, summary_rows
from .targets import agentd_root

__all__ = ("main",)

RESULTS = ROOT / "bench" / "results"
NEEDS_CEILING = {
    "http-hello",
    "http-chat-hit",
    "http-chat-miss",
    "http-stream",
    "workers-scaling",
    "open-loop",
    "added-latency",
    "peer-litellm",
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    names = ", ".join(SCENARIOS)
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="agentd's benchmark suite: agentd against baselines run in the same run "
        f"(see bench/README.md). Scenarios: {names}.",
    )
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help="scenarios to run (default: all but soak)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short runs: the suite in < 3 min")
    size.add_argument(
        "--tiny",
        action="store_true",
        help="sub-second runs with the Python generator only (the smoke test)",
    )
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="add the soak scenario, this many minutes long (a fraction for seconds: 0.1 is 6 s)",
    )
    parser.add_argument(
        "--soak-rate",
        type=float,
        default=0.0,
        metavar="TURNS_PER_S",
        help="the soak's chat turns/s (default: half of the capacity it probes first)",
    )
    parser.add_argument(
        "--p99-bound",
        type=float,
        default=10.0,
        metavar="MS",
        help="open loop: the p99 a rate must hold (default 10)",
    )
    parser.add_argument(
        "--generator",
        choices=["wrk", "python"],
        default="wrk",
        help="closed-loop HTTP load generator (default wrk)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default bench/results/<UTC timestamp>)",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="do not install missing wrk, nginx or redis-server, nor a peer (LiteLLM)",
    )
    parser.add_argument(
        "--agentd-root",
        type=Path,
        default=None,
        help="measure the agentd of another checkout (default: this one)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other processes to leave the CPUs idle",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {names}")
    if args.soak < 0 or args.soak > 24 * 60:
        parser.error("--soak must be between 0 and 1440 minutes")
    if args.soak_rate < 0 or args.soak_rate > 1_000_000:
        parser.error("--soak-rate must be between 0 and 1,000,000 turns/s")
    return args


def _install(notes: list[str]) -> None:
    """wrk, nginx and redis-server from the system packages when missing (best effort)."""
    missing = [p for p in ("wrk", "nginx", "redis-server") if not have(p)]
    if not missing:
        return
    script = ROOT / "scripts" / "ensure-system-deps"
    done = subprocess.run([str(script), *missing], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        notes.append(f"could not install {', '.join(missing)}: {done.stderr.strip()[-300:]}")


def _wait_quiet(limit: float) -> str:
    waited, busy = wait_quiet(limit, window=3.0)
    if busy < 0.15:
        return f"waited {waited:.0f} s for a quiet machine (other processes: {busy:.2f} CPUs)"
    return f"the machine stayed busy ({busy:.2f} CPUs used by others after {waited:.0f} s)"


def _record(scenario: Scenario) -> dict[str, Any]:
    return {
        "name": scenario.name,
        "summary": scenario.summary,
        "status": "ok",
        "notes": [],
        "runs": [],
        "ratios": [],
        "figures": {},
        "elapsed_s": 0.0,
    }


def _run_one(bench: Bench, scenario: Scenario, progress: Progress) -> dict[str, Any]:
    bench.record = _record(scenario)
    bench.tick = progress.tick
    progress.begin(scenario.name)
    started = time.monotonic()
    try:
        scenario.run(bench)
    except Exception as exc:  # a failed scenario is reported, the suite goes on
        bench.record["status"] = "failed"
        bench.record["reason"] = f"{type(exc).__name__}: {exc}"[:2000]
        bench.record["notes"].append(traceback.format_exc()[-3000:])
    bench.record["elapsed_s"] = round(time.monotonic() - started, 2)
    progress.end(scenario.name, bench.record["status"])
    return bench.record


def _settings_dict(s: Settings) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.__dict__.items()}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.list:
        for name, scenario in SCENARIOS.items():
            print(f"{name:<16} {scenario.summary}")
        return 0
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    if args.agentd_root is not None:
        os.environ["BENCH_AGENTD_ROOT"] = str(args.agentd_root.resolve())
    notes: list[str] = []
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    if not args.no_install and mode != "tiny":
        _install(notes)
    else:
        os.environ["BENCH_NO_INSTALL"] = "1"  # peers (bench/peers.py) are not installed either
    generator = args.generator
    if generator == "wrk" and not have("wrk"):
        generator = "python"
        notes.append("wrk is missing: closed-loop HTTP load uses the Python generator")
    settings = settings_for(mode, args.soak, args.p99_bound, generator, args.soak_rate)
    chosen = args.scenarios or [n for n, s in SCENARIOS.items() if s.default]
    if args.soak and "soak" not in chosen:
        chosen.append("soak")
    if args.wait_quiet > 0:
        notes.append(_wait_quiet(min(args.wait_quiet, 3600.0)))
    started = dt.datetime.now(dt.UTC)
    outdir = args.out or RESULTS / started.strftime("%Y%m%dT%H%M%SZ")
    outdir.mkdir(parents=True, exist_ok=True)
    todo = [SCENARIOS[n] for n in chosen]
    if mode != "tiny" and NEEDS_CEILING & set(chosen):
        todo.insert(0, CEILING)
    progress = Progress({s.name: s.estimate(settings) for s in todo})
    facts = machine_facts(agentd_root())
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        bench = Bench(settings, Path(tmp), outdir, retries_left=settings.noise_retries)
        for scenario in todo:
            records.append(_run_one(bench, scenario, progress))
    ceiling = records.pop(0) if todo and todo[0] is CEILING else None
    flag_generator_limits(records, ceiling)
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    finished = dt.datetime.now(dt.UTC)
    results = {
        "schema_version": 1,
        "started_at": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "finished_at": finished.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "elapsed_s": round((finished - started).total_seconds(), 1),
        "mode": mode,
        "command": command,
        "notes": notes,
        "machine": facts,
        "layout": {
            "server_cpus": settings.server_cpus,
            "load_cpus": settings.load_cpus,
            "description": settings.layout,
        },
        "settings": _settings_dict(settings),
        "generator_ceiling": ceiling,
        "scenarios": records,
        "summary": summary_rows(records, settings.main_concurrency),
    }
    problems = validate(results, load_schema())
    if problems:
        results["notes"].append(
            "results.json does not match its schema: " + "; ".join(problems[:5])
        )
    (outdir / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, outdir)
    failed = [r["name"] for r in records if r["status"] == "failed"]
    print(
        f"\nwrote {outdir} in {clock(results['elapsed_s'])}"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed or problems else 0
