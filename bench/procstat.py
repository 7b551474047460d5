"""Server cost from ``/proc``: CPU seconds and resident memory of a process tree.

CPU per request is steadier than req/s on a noisy machine: another tenant stealing the
core slows the server down but does not make each request cost more CPU.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = (
    "ProcessRss",
    "RssSampler",
    "children",
    "connections",
    "cpu_seconds",
    "machine_cpu",
    "rss_bytes",
    "runqueue_wait",
    "tree",
    "wait_quiet",
)

_TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (over all its threads); empty if it is gone."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a supervisor and its workers, nginx and its)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children(current)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes, in seconds (processes gone count 0)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may contain spaces) start at state.
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def runqueue_wait(pid: int) -> float:
    """Seconds the threads of ``pid`` spent runnable but not running (schedstat's
    run_delay): behind other processes, or throttled by a CPU quota. With its CPU time,
    how much of a window it had work: short of CPU, rather than idle."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def machine_cpu() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot, over all CPUs.

    Busy minus what the server and the generator used is what *other* processes took
    during a measurement: the noise the report shows beside each figure.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK, steal / _TICK


def wait_quiet(limit: float, busy_below: float = 0.15, window: float = 1.0) -> tuple[float, float]:
    """Wait (up to ``limit`` s) until the machine's CPUs stay under ``busy_below`` CPUs busy
    for ``window`` s; returns (seconds waited, CPUs busy in the last window)."""
    started = time.monotonic()
    while True:
        before = machine_cpu()[0]
        time.sleep(window)
        busy = (machine_cpu()[0] - before) / window
        waited = time.monotonic() - started
        if busy < busy_below or waited >= limit:
            return waited, busy


def rss_bytes(pids: list[int]) -> int:
    """Sum of VmRSS of the given processes, in bytes."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    return total


class RssSampler:
    """Samples the RSS of a changing set of processes in a thread, ``interval`` apart.

    ``pids`` is called at each sample, so workers that appear later are counted.
    """

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.2) -> None:
        self._pids = pids
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (monotonic time, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), rss_bytes(self._pids())))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> int:
        """The highest sample taken between ``start`` and ``end`` (monotonic times)."""
        values = [rss for t, rss in list(self.samples) if start <= t <= end]
        return max(values, default=0)

    def series(self, origin: float) -> list[list[float]]:
        """Samples as ``[seconds since origin, MiB]`` pairs, for the RSS plot."""
        return [[round(t - origin, 2), round(rss / 2**20, 2)] for t, rss in list(self.samples)]


class ProcessRss:
    """Samples the RSS of each process of a changing, labelled set (``labels`` is called
    at each sample: e.g. the supervisor, each worker by pid, redis-server), and any extra
    readings (``extra``, e.g. Redis's own ``used_memory``), ``interval`` apart."""

    def __init__(
        self,
        labels: Callable[[], dict[str, int]],
        interval: float,
        extra: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self._labels = labels
        self._extra = extra
        self.interval = interval
        self.samples: dict[str, list[tuple[float, float]]] = {}  # label -> (time, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-rss", daemon=True)

    def start(self) -> ProcessRss:
        if not self._stop.is_set():
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        now = time.monotonic()
        readings = {label: rss_bytes([pid]) / 2**20 for label, pid in self._labels().items()}
        if self._extra is not None:
            # A failed reading is a missing sample, not a failed run.
            with contextlib.suppress(Exception):
                readings.update(self._extra())
        for label, mib in readings.items():
            if mib > 0:
                self.samples.setdefault(label, []).append((now, mib))

    def stop(self) -> None:
        """Stop sampling, with a last reading at the end of the window (once; safe to
        call again, or before ``start``)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
            self.sample()


def _established(port: int) -> set[str]:
    """Socket inodes of the established TCP connections whose local port is ``port``."""
    out: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HOST:PORT in hex; state 01 is ESTABLISHED; inode is field 9.
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                out.add(fields[9])
    return out


def connections(pids: list[int], port: int) -> dict[int, int]:
    """How many established connections to local ``port`` each process holds open: where
    the kernel's ``SO_REUSEPORT`` hash put a load generator's connections."""
    inodes = _established(port)
    out: dict[int, int] = {}
    for pid in pids:
        count = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        count += 1
        out[pid] = count
    return out
