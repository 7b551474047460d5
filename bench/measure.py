"""One measurement: load on a target, with the server's CPU and RSS read around it.

Every run record carries the exact load command, the figures (req/s, latency
percentiles, errors), the server's CPU seconds per 1,000 requests and peak RSS, and
how busy the generator was, so a result capped by the generator shows as such.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procstat import RssSampler, cpu_seconds, machine_cpu, wait_quiet
from .settings import Settings
from .targets import Target, pinned
from .wrk import lua_script, parse_output, wrk_command

__all__ = ("Bench", "Served")

SATURATED = 0.9  # a process using this share of its CPUs (or more) is the bottleneck
NOISY = 0.2  # other processes used more CPUs than this during a run: measure it again
MAX_ATTEMPTS = 3


@dataclass
class Served:
    """A target being measured, with its RSS sampled for the whole time it serves."""

    target: Target
    sampler: RssSampler
    workers: int = 1
    extra_pids: list[int] = field(default_factory=list)  # e.g. its Redis: CPU counted too
    # The scenario's own processes that are neither measured nor noise (the model stub
    # behind agentd): their CPU is left out of the target's and out of "other CPU".
    side_pids: list[int] = field(default_factory=list)
    # Each worker's CPU quota (bench.cpuquota) when it has one: "saturated" is relative to it.
    cpu_quota: float | None = None
    # Called with the load generator's pid as the measured window opens; what the
    # callable it returns gives when the window closes goes into the run's record
    # (per-worker figures, say).
    probe: Callable[[int], Callable[[], dict[str, Any]]] | None = None

    def cpu_pids(self) -> list[int]:
        return self.target.pids() + self.extra_pids


def _cpu(served: Served) -> tuple[float, float, float]:
    """CPU seconds of all the served processes, of its extra ones alone, and of its side
    ones (not counted in the first)."""
    extra = cpu_seconds(served.extra_pids) if served.extra_pids else 0.0
    side = cpu_seconds(served.side_pids) if served.side_pids else 0.0
    return cpu_seconds(served.target.pids()) + extra, extra, side


@dataclass
class Bench:
    """The run's context: settings, CPU layout, where files go, and the scenario record."""

    settings: Settings
    workdir: Path
    outdir: Path
    origin: float = field(default_factory=time.monotonic)
    record: dict[str, Any] = field(default_factory=dict)
    tick: Any = None  # called after each measurement (the progress line)
    retries_left: int = 0  # the run's budget of noisy measurements to repeat

    @contextlib.contextmanager
    def serve(
        self,
        target_cm: contextlib.AbstractContextManager[Target],
        workers: int = 1,
        extra_pids: list[int] | None = None,
        side_pids: list[int] | None = None,
    ) -> Iterator[Served]:
        """Start a target, sample its RSS while it serves, keep the series in the record."""
        with target_cm as target:
            sampler = RssSampler(target.pids).start()
            try:
                yield Served(
                    target,
                    sampler,
                    workers,
                    list(extra_pids or []),
                    side_pids=list(side_pids or []),
                )
            finally:
                sampler.stop()
                series = self.record.setdefault("rss_series", {})
                series[target.name] = [
                    [round(t - self.origin, 2), round(rss / 2**20, 2)] for t, rss in sampler.samples
                ]
                self.record.setdefault("server_commands", {})[target.name] = shlex.join(
                    target.command
                )

    # -- HTTP --------------------------------------------------------------------------

    def http(
        self,
        served: Served,
        path: str,
        *,
        concurrency: int,
        method: str = "GET",
        body: str | None = None,
        sessions: list[str] | None = None,
        rate: float = 0.0,
        generator: str | None = None,
        seconds: float | None = None,
        window: float = 0.0,
        label: str = "",
        headers: dict[str, str] | None = None,
        name: str = "",
    ) -> dict[str, Any]:
        """Load ``path`` on ``served``: wrk (closed loop) or the Python generator. ``name``
        is the run's target in the results when not the server's own (one server measured
        doing two kinds of work)."""
        gen = generator or self.settings.generator
        seconds = seconds or self.settings.duration
        url = served.target.url(path)
        if gen == "wrk" and rate == 0:
            script = self.outdir / "scripts" / f"{self._slug(served, path, label)}.lua"
            script.parent.mkdir(exist_ok=True)
            script.write_text(lua_script(method, body, sessions, headers))
            warm = pinned(
                wrk_command(
                    url, script, concurrency, self.settings.warmup, len(self.settings.load_cpus)
                ),
                self.settings.load_cpus,
            )
            cmd = pinned(
                wrk_command(url, script, concurrency, seconds, len(self.settings.load_cpus)),
                self.settings.load_cpus,
            )
            if self.settings.warmup > 0:
                subprocess.run(warm, capture_output=True, timeout=60, check=False)
            result = self._quietest(lambda: self._run_wrk(served, cmd))
        else:
            if sessions:
                raise ValueError("rotating sessions is a wrk feature")
            cmd = self._loadgen("http", url, concurrency, seconds, "--method", method)
            if body is not None:
                cmd += ["--body", body]
            for name, value in (headers or {}).items():
                cmd += ["--header", f"{name}: {value}"]
            if rate > 0:
                cmd += ["--rate", f"{rate:g}"]
            if window > 0:
                cmd += ["--window", f"{window:g}"]
            full = pinned(cmd, self.settings.load_cpus)
            result = self._quietest(lambda: self._run_python(served, full))
        result.update(concurrency=concurrency, path=path, method=method, label=label)
        if name:
            result["target"] = name
        return self._finish(result)

    def ws_turns(self, served: Served, path: str, *, concurrency: int) -> dict[str, Any]:
        """``concurrency`` WebSocket connections running chat turns back to back."""
        cmd = self._loadgen("ws-turns", served.target.url(path), concurrency)
        full = pinned(cmd, self.settings.load_cpus)
        result = self._quietest(lambda: self._run_python(served, full))
        result.update(concurrency=concurrency, path=path, method="WS", label="turns")
        return self._finish(result)

    def mcp_calls(
        self,
        served: Served,
        path: str,
        *,
        tool: str,
        arguments: dict[str, Any],
        concurrency: int,
        expect: str | None = None,
        label: str = "",
        name: str = "",
    ) -> dict[str, Any]:
        """``concurrency`` callers of ``tool`` on the MCP server ``served`` (streamable HTTP
        at ``path``), back to back, with the ``mcp`` client SDK: one session per generator
        process, shared by its callers."""
        cmd = self._loadgen("mcp-calls", served.target.url(path), concurrency, None,
                            "--tool", tool, "--body", json.dumps(arguments))  # fmt: skip
        if expect is not None:
            cmd += ["--expect", expect]
        full = pinned(cmd, self.settings.load_cpus)
        result = self._quietest(lambda: self._run_python(served, full))
        result.update(concurrency=concurrency, path=path, method="MCP", label=label)
        if name:
            result["target"] = name
        return self._finish(result)

    # -- internals ---------------------------------------------------------------------

    def _loadgen(
        self, mode: str, url: str, concurrency: int, seconds: float | None = None, *extra: str
    ) -> list[str]:
        """The Python load generator's command (``python -m bench.loadgen MODE``) for
        ``concurrency`` connections to ``url`` for ``seconds`` (the run's duration when
        None), on every load CPU."""
        duration = self.settings.duration if seconds is None else seconds
        return [
            sys.executable, "-m", "bench.loadgen", mode, "--url", url, *extra,
            "--connections", str(concurrency), "--duration", f"{duration:g}",
            "--warmup", f"{self.settings.warmup:g}",
            "--procs", str(len(self.settings.load_cpus)),
        ]  # fmt: skip

    def _quietest(self, attempt: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Measure; while other processes kept the CPUs busy (more than ``NOISY``), wait
        briefly for quiet and measure again, within the run's budget. Keeps the quietest
        attempt and says how many there were."""
        best, attempts = attempt(), 1
        while (
            best.get("other_cpu_util", 0.0) > NOISY
            and attempts < MAX_ATTEMPTS
            and self.retries_left > 0
        ):
            self.retries_left -= 1
            wait_quiet(10.0)
            again = attempt()
            attempts += 1
            if again.get("other_cpu_util", 0.0) < best.get("other_cpu_util", 0.0):
                best = again
        best["attempts"] = attempts
        return best

    def _slug(self, served: Served, path: str, label: str) -> str:
        name = f"{self.record.get('name', 'run')}-{served.target.name}-{label or path}"
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")

    def _run_wrk(self, served: Served, cmd: list[str]) -> dict[str, Any]:
        (cpu0, extra0, side0), t0, box0 = _cpu(served), time.monotonic(), machine_cpu()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        finish = served.probe(proc.pid) if served.probe else None
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        t1, box1 = time.monotonic(), machine_cpu()
        cpu1, extra1, side1 = _cpu(served)
        result = parse_output(stdout)
        result.update(finish() if finish else {})
        gen_cpu = usage.ru_utime + usage.ru_stime
        result["generator_cpu_util"] = round(gen_cpu / max(t1 - t0, 1e-9), 3)
        self._noise(result, box0, box1, cpu1 - cpu0 + side1 - side0 + gen_cpu, t1 - t0)
        return self._server_side(served, result, cmd, cpu1 - cpu0, t0, t1, extra1 - extra0)

    def _run_python(self, served: Served, cmd: list[str]) -> dict[str, Any]:
        out = self.workdir / f"loadgen-{time.monotonic_ns()}.json"
        full = [*cmd, "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        errors = out.with_suffix(".stderr")
        with open(errors, "w") as err:  # a file, not a pipe: it cannot fill up and block
            proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert proc.stdout is not None
        t0 = t1 = time.monotonic()
        cpu0 = cpu1 = extra0 = extra1 = side0 = side1 = 0.0
        box0 = box1 = (0.0, 0.0)
        finish, probed = None, {}
        for line in proc.stdout:
            if line.startswith("measure-start"):
                (cpu0, extra0, side0), t0, box0 = _cpu(served), time.monotonic(), machine_cpu()
                finish = served.probe(proc.pid) if served.probe else None
            elif line.startswith("measure-end"):
                t1, box1 = time.monotonic(), machine_cpu()
                cpu1, extra1, side1 = _cpu(served)
                probed = finish() if finish else {}
        code = proc.wait(timeout=120)
        stderr = errors.read_text(errors="replace")
        errors.unlink()
        if code != 0 or not out.exists():
            raise RuntimeError(f"load generator failed ({proc.returncode}): {stderr[-2000:]}")
        result = json.loads(out.read_text())
        out.unlink()
        result["generator_cpu_util"] = result.pop("cpu_util", None)
        result.update(probed)
        ours = cpu1 - cpu0 + side1 - side0 + result.get("cpu_s", 0.0)
        self._noise(result, box0, box1, ours, t1 - t0)
        return self._server_side(served, result, cmd, cpu1 - cpu0, t0, t1, extra1 - extra0)

    @staticmethod
    def _noise(
        result: dict[str, Any],
        box0: tuple[float, float],
        box1: tuple[float, float],
        ours: float,
        wall: float,
    ) -> None:
        """CPUs other processes kept busy during the window, and CPU stolen by the host."""
        wall = max(wall, 1e-9)
        result["other_cpu_util"] = round(max(0.0, box1[0] - box0[0] - ours) / wall, 3)
        result["steal_cpu_util"] = round(max(0.0, box1[1] - box0[1]) / wall, 3)

    def _server_side(
        self,
        served: Served,
        result: dict[str, Any],
        cmd: list[str],
        cpu: float,
        t0: float,
        t1: float,
        extra_cpu: float = 0.0,
    ) -> dict[str, Any]:
        requests = result.get("requests") or 0
        if served.extra_pids:
            # The part of server_cpu_s the extra processes (a Redis, a tool server) used.
            result["extra_cpu_s"] = round(extra_cpu, 3)
            result["extra_cpu_s_per_1k"] = (
                round(extra_cpu / requests * 1000.0, 5) if requests else None
            )
        wall = max(t1 - t0, 1e-9)
        result.update(
            target=served.target.name,
            command=shlex.join(cmd),
            server_cpu_s=round(cpu, 3),
            server_cpu_s_per_1k=round(cpu / requests * 1000.0, 5) if requests else None,
            server_cpu_util=round(cpu / wall, 3),
            server_peak_rss_mb=round(served.sampler.peak(t0, t1 + 0.3) / 2**20, 2),
            t_start=round(t0 - self.origin, 2),
            t_end=round(t1 - self.origin, 2),
        )
        share = served.cpu_quota or 1.0
        server_busy = result["server_cpu_util"] >= SATURATED * served.workers * share
        gen_busy = (result.get("generator_cpu_util") or 0) >= SATURATED * len(
            self.settings.load_cpus
        )
        result["limited_by"] = (
            ("server" if served.cpu_quota is None else "server (CPU quota)")
            if server_busy
            else "generator"
            if gen_busy
            else "neither (latency-bound)"
        )
        return result

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        self.record.setdefault("runs", []).append(result)
        if self.tick is not None:
            self.tick()
        return result
