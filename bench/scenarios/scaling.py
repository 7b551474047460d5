"""workers-scaling: do two agentd workers serve twice what one does?

Two measurements of the same question. The unconstrained one (1 worker on CPU 0 against
2 on CPUs 0-1) is what the machine's layout allows on 2 cores: the second worker shares
its core with the load generator, so its ratio is a floor. The CPU-bounded one gives
every serving process the same CPU quota (CFS bandwidth control, ``bench.cpuquota``,
``QUOTA`` CPU each), each pinned to a CPU of its own, the generator on the load CPUs as
before: 1 worker at ``QUOTA`` against 2 at ``QUOTA`` each. The second worker still shares
its core with the generator, but both fit in it, so a worker that uses its whole quota
was not held back by the machine, and a ratio short of 2 is a shared bottleneck (the
supervisor, Redis, the kernel's ``SO_REUSEPORT`` spread, shared files or locks). The
bare aiohttp app with 1 and 2 processes under the same quotas is the control: what
"scales perfectly" reaches with the same layout, quotas and generator.

A process's rate under a CFS quota grows faster than its quota (the bare aiohttp app,
10 ms period: 0.2, 0.4 and 0.8 CPU served 5.4k, 11.1k and 27.6k req/s; with a 100 ms
period 7.3k, 13.7k and 31.0k): a throttled process loses time at every period's start,
and more of its quota the smaller the quota is. 2 x ``QUOTA`` over 1 x ``QUOTA`` is
therefore above 2 for the control too. The variant also runs 1 worker (1 aiohttp
process) at twice the quota: 2 workers at ``QUOTA`` each over 1 at ``2 * QUOTA`` compares
the same CPU held by one process or split between two: about 1 where splitting costs
nothing (a little below, as each of two processes pays its own loss).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import cpuquota, targets
from ..measure import Bench, Served
from ..procstat import children, connections, cpu_seconds, runqueue_wait, tree
from ..stats import ratio
from .common import CHAT, HIT_CHAT, Scenario, have, ratio_row
from .common import run_seconds as _secs
from .http import _warm_cache

__all__ = ("QUOTA", "WORKERS_SCALING", "serving_pids")

QUOTA = 0.4  # CPUs per serving process in the bounded variant
BOUNDED = f"{QUOTA:g} CPU each"
DOUBLE = f"{2 * QUOTA:g} CPU"  # the one-process runs at twice the quota
SPLIT = f"2 at {QUOTA:g} CPU ÷ 1 at {2 * QUOTA:g} CPU"  # their ratios' label
WAIT_WORKERS = 30.0


def serving_pids(served: Served, count: int) -> list[int]:
    """The processes that serve requests: the root's children (agentd's workers, the
    aiohttp app's forked processes), or the root itself when it serves alone; waits
    (up to ``WAIT_WORKERS`` s) until ``count`` of them run."""
    root = served.target.proc.pid
    deadline = time.monotonic() + WAIT_WORKERS
    while True:
        pids = sorted(children(root)) or [root]
        if len(pids) >= count or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


class _Spread:
    """Samples each worker's open connections to the port while the load runs and keeps
    the fullest sample: where the kernel's ``SO_REUSEPORT`` hash put the connections."""

    def __init__(self, pids: list[int], port: int, interval: float = 0.25) -> None:
        self.pids, self.port, self.interval = pids, port, interval
        self.best: dict[int, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conn-spread", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sample = connections(self.pids, self.port)
            if sum(sample.values()) > sum(self.best.values()):
                self.best = sample

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.best


def _probe(
    served: Served, pids: list[int], held: cpuquota.CpuQuota
) -> Callable[[int], Callable[[], dict[str, Any]]]:
    """Per-worker figures over the measured window: CPU used (against the quota), the
    share of CFS periods it was throttled in, the share of the window it was runnable but
    not running (throttled or behind others), and its open connections. The generator's
    processes get a weighted group with no quota for the window (``cpuquota.WEIGHT``), so
    neighbours on its CPUs do not hold the load back either."""

    def start(generator: int) -> Callable[[], dict[str, Any]]:
        for pid in tree(generator):
            with contextlib.suppress(OSError):  # gone already: a very short run
                held.place(pid, capped=False)
        t0, cpu0, thr0 = time.monotonic(), {p: cpu_seconds([p]) for p in pids}, held.throttling()
        wait0 = {p: runqueue_wait(p) for p in pids}
        spread = _Spread(pids, served.target.port)

        def finish() -> dict[str, Any]:
            wall = max(time.monotonic() - t0, 1e-9)
            conns, thr1 = spread.stop(), held.throttling()
            workers = []
            for pid in pids:
                periods = thr1[pid][0] - thr0[pid][0]
                throttled = thr1[pid][1] - thr0[pid][1]
                workers.append(
                    {
                        "pid": pid,
                        "cpu_util": round((cpu_seconds([pid]) - cpu0[pid]) / wall, 3),
                        "quota": held.cpus,
                        "throttled_share": round(throttled / periods, 3) if periods else None,
                        # Runnable but not running: throttled, or behind other processes.
                        "runqueue_wait_share": round((runqueue_wait(pid) - wait0[pid]) / wall, 3),
                        "connections": conns.get(pid, 0),
                    }
                )
            return {"workers": workers}

        return finish

    return start


def _pin(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` on ``cpu``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {cpu})


# (key in the runs, target, serving processes, quota of each, label)
_BOUNDED_RUNS = (
    ("agentd-1w", "agentd-1w", 1, QUOTA, BOUNDED),
    ("agentd-2w", "agentd-2w", 2, QUOTA, BOUNDED),
    ("agentd-1w-double", "agentd-1w", 1, 2 * QUOTA, DOUBLE),
    ("aiohttp-1p", "aiohttp-1p", 1, QUOTA, BOUNDED),
    ("aiohttp-2p", "aiohttp-2p", 2, QUOTA, BOUNDED),
    ("aiohttp-1p-double", "aiohttp-1p", 1, 2 * QUOTA, DOUBLE),
)


def _bounded_runs(bench: Bench, redis_url: str) -> dict[str, dict[str, Any]]:
    """The quota-bound runs (agentd 1 and 2 workers, aiohttp 1 and 2 processes, at
    ``QUOTA`` each; 1 of each at twice that), every serving process in a cgroup of its
    own."""
    s, runs = bench.settings, {}
    for key, name, count, quota, label in _BOUNDED_RUNS:
        # As in the unconstrained runs: 1 on the server CPU, 2 on the first two CPUs, now
        # one CPU each; the generator on the load CPUs.
        cpus = s.all_cpus[:count]
        if name.startswith("agentd"):
            cm = targets.agentd(bench.workdir, cpus, workers=count, redis_url=redis_url, name=name)
        else:
            cm = targets.aiohttp_baseline(bench.workdir, cpus, processes=count, name=name)
        with (
            bench.serve(cm, workers=count) as served,
            _quota(served, count, cpus, quota) as pids,
        ):
            if name.startswith("agentd"):
                _warm_cache(served.target.url(), count)
            runs[key] = bench.http(
                served,
                "/v1/chat/completions",
                method="POST",
                body=HIT_CHAT,
                concurrency=s.main_concurrency,
                label=label,
            )
            runs[key]["serving_pids"] = pids
    return runs


@contextlib.contextmanager
def _quota(served: Served, count: int, cpus: list[int], quota: float) -> Iterator[list[int]]:
    """Each serving process of ``served`` under ``quota`` for the block and pinned to a
    CPU of its own (``cpus`` in turn), with the per-worker probe attached; the cgroups
    are removed on the way out."""
    pids = serving_pids(served, count)
    hierarchy = cpuquota.find_hierarchy()
    assert hierarchy is not None  # unavailable() said yes before the runs
    with cpuquota.CpuQuota(quota, hierarchy, prefix="bench-scaling") as held:
        for i, pid in enumerate(pids):
            held.place(pid)
            if cpus:
                _pin(pid, cpus[i % len(cpus)])
        served.cpu_quota = quota
        served.probe = _probe(served, pids, held)
        yield pids


def _ratio_rows(
    runs: dict[str, dict[str, Any]], target: str, baseline: str, label: str, concurrency: int
) -> Iterator[dict[str, Any]]:
    a, b = runs[target], runs[baseline]
    for metric, unit, better in (
        ("rps", "req/s", True),
        ("server_cpu_s_per_1k", "CPU s/1k req", False),
    ):
        yield ratio_row(metric, unit, better, target, baseline, label, concurrency,
                        a[metric], b[metric], (a, b))  # fmt: skip


def _bounded_note(bench: Bench, runs: dict[str, dict[str, Any]]) -> str:
    s = bench.settings
    parts = []
    for name, run in runs.items():
        per = ", ".join(
            f"{w['cpu_util']:.2f} CPU, throttled in {w['throttled_share'] or 0:.0%} of periods, "
            f"runnable but not running {w['runqueue_wait_share']:.0%} of the time, "
            f"{w['connections']} conns"
            for w in run.get("workers", [])
        )
        parts.append(f"{name}: {per}")
    return (
        f"CPU-bounded variant ({BOUNDED}): every serving process (each agentd worker, each "
        f"aiohttp process) in a cgroup of its own with a CFS quota of {QUOTA:g} CPU "
        f"({cpuquota.PERIOD_US // 1000} ms period) and {cpuquota.WEIGHT}x the default CPU "
        f"weight (so other tenants' processes do not starve it below the quota), each "
        f"pinned to a CPU of its own ({s.all_cpus[:2]} in turn), the generator on CPUs "
        f"{s.load_cpus} in a weighted group without a quota; the cache-hit turn "
        "(temperature 0, every worker's L1 warmed first). agentd-2w / agentd-1w is the "
        "scaling of agentd's workers; aiohttp-2p / aiohttp-1p, the same layout and quotas "
        "with nothing shared, is the control. A process's rate under a quota grows "
        "faster than the quota (it loses time at each period's start, the more of a "
        f"smaller quota), so both are above 2; 1 worker (1 process) at {DOUBLE} holds the "
        f"CPU of two at {QUOTA:g}: {SPLIT} is 1 where splitting the same CPU between two "
        "processes costs nothing. A worker is quota-bound when its CPU is "
        "close to the quota and it is throttled in most periods; CPU plus the time runnable "
        "but not running near 1 means it always had work (one below its quota then was "
        "behind other processes, not short of work). p99 there includes "
        "throttling waits. Per worker over the window: " + "; ".join(parts) + "."
    )


def run_scaling(bench: Bench) -> None:
    s = bench.settings
    if not have("redis-server"):
        bench.record["status"] = "skipped"
        bench.record["reason"] = "more than one worker needs Redis: redis-server is missing"
        return
    notes = bench.record.setdefault("notes", [])
    cpus2 = s.all_cpus[:2]
    notes.append(
        f"Redis mode for both. 1 worker on CPU {s.server_cpus} vs 2 workers on CPUs {cpus2}; "
        f"the load generator stays on CPUs {s.load_cpus}, so on a 2-core machine the second "
        "worker shares its core with the generator: the ratio is a floor, and CPU per "
        "request is the figure to read. The CPU-bounded variant below answers whether the "
        "workers scale."
    )
    runs: dict[str, dict[str, Any]] = {}
    why_not = cpuquota.unavailable() if s.server_cpus else "one CPU: nothing is pinned"
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        for workers, cpus in ((1, s.server_cpus), (2, cpus2)):
            name = f"agentd-{workers}w"
            cm = targets.agentd(
                bench.workdir, cpus, workers=workers, redis_url=redis.url, name=name
            )
            with bench.serve(cm, workers=workers) as served:
                runs[name] = bench.http(
                    served,
                    "/v1/chat/completions",
                    method="POST",
                    body=CHAT,
                    concurrency=s.main_concurrency,
                )
        bounded = _bounded_runs(bench, redis.url) if why_not is None else {}
    c = s.main_concurrency
    bench.record["ratios"] = list(_ratio_rows(runs, "agentd-2w", "agentd-1w", "", c))
    if why_not is not None:
        bench.record["figures"] = {"bounded": {"status": "skipped", "reason": why_not}}
        notes.append(f"CPU-bounded variant skipped: {why_not}.")
        return
    bench.record["ratios"] += [
        *_ratio_rows(bounded, "agentd-2w", "agentd-1w", BOUNDED, c),
        *_ratio_rows(bounded, "aiohttp-2p", "aiohttp-1p", BOUNDED, c),
        *_ratio_rows(bounded, "agentd-2w", "agentd-1w-double", SPLIT, c),
        *_ratio_rows(bounded, "aiohttp-2p", "aiohttp-1p-double", SPLIT, c),
    ]

    def rps(a: str, b: str) -> float | None:
        return ratio(bounded[a]["rps"], bounded[b]["rps"])

    agentd_x, control_x = rps("agentd-2w", "agentd-1w"), rps("aiohttp-2p", "aiohttp-1p")
    agentd_split = rps("agentd-2w", "agentd-1w-double")
    control_split = rps("aiohttp-2p", "aiohttp-1p-double")
    bench.record["figures"] = {
        "bounded": {
            "quota_cpus": QUOTA,
            "period_us": cpuquota.PERIOD_US,
            "agentd_2w_over_1w": agentd_x,
            "aiohttp_2p_over_1p": control_x,
            "agentd_over_control": ratio(agentd_x, control_x),
            "agentd_2w_over_1w_double": agentd_split,
            "aiohttp_2p_over_1p_double": control_split,
            "agentd_split_over_control": ratio(agentd_split, control_split),
            "workers": {name: run.get("workers") for name, run in bounded.items()},
        }
    }
    notes.append(_bounded_note(bench, bounded))


WORKERS_SCALING = Scenario(
    "workers-scaling",
    "agentd with 1 worker vs 2 workers (Redis mode): unconstrained (stateless echo turn), "
    "and with every worker under the same CPU quota (cache-hit turn) beside the bare "
    "aiohttp app with 1 and 2 processes under the same quotas",
    run_scaling,
    lambda s: _secs(s, 6, 7),
)
