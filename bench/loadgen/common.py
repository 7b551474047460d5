"""What every load mode shares: the per-process recorder and the load specification."""

from __future__ import annotations

import resource
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

__all__ = ("Recorder", "Spec", "cpu_now", "share")


@dataclass(frozen=True)
class Spec:
    """One load run, as given on the command line (picklable, sent to every process)."""

    mode: str  # http | ws-turns | ws-idle | mcp-calls
    host: str
    port: int
    path: str = "/"
    method: str = "GET"
    body: bytes | None = None
    connections: int = 64
    duration: float = 5.0
    warmup: float = 1.0
    rate: float = 0.0  # > 0: open loop at this many requests/s over all processes
    procs: int = 1
    window: float = 0.0  # > 0: per-window p99 and rate in the summary
    sources: tuple[str, ...] = ("127.0.0.1",)  # source addresses, one per process in turn
    hold: float = 600.0  # ws-idle: the longest connections are held without "close"
    content: str = "hello there, how are you today?"  # ws-turns: the message sent
    headers: dict[str, str] = field(default_factory=dict)
    tool: str = ""  # mcp-calls: the tool called (its arguments are ``body``, JSON)
    expect: str | None = None  # mcp-calls: the text a call must answer


def share(total: int | float, procs: int, index: int) -> int:
    """Process ``index``'s share of ``total`` connections: spread as evenly as possible."""
    base, extra = divmod(int(total), procs)
    return base + (1 if index < extra else 0)


def cpu_now() -> float:
    """CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Recorder:
    """Latencies (s), completion times (s since start), send lag (s) and errors by kind."""

    def __init__(self) -> None:
        self.latencies = array("d")
        self.ends = array("d")
        self.lags = array("d")
        self.errors: dict[str, int] = {}
        self.start = time.perf_counter()
        self.cpu_start = cpu_now()
        self.elapsed = 0.0
        self.cpu = 0.0

    def begin(self) -> None:
        self.start = time.perf_counter()
        self.cpu_start = cpu_now()

    def ok(self, latency: float, end: float) -> None:
        self.latencies.append(latency)
        self.ends.append(end - self.start)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def finish(self) -> None:
        self.elapsed = time.perf_counter() - self.start
        self.cpu = cpu_now() - self.cpu_start

    def result(self) -> dict[str, Any]:
        return {
            "latencies": self.latencies.tobytes(),
            "ends": self.ends.tobytes(),
            "lags": self.lags.tobytes(),
            "errors": self.errors,
            "elapsed": self.elapsed,
            "cpu": self.cpu,
        }
