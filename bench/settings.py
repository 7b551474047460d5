"""How long and how hard each run goes (full, ``--quick``, ``--tiny``) and the CPU layout."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ("Settings", "cpu_layout", "settings_for")


def cpu_layout() -> tuple[list[int], list[int], str]:
    """(server CPUs, load CPUs, a sentence saying so).

    The server side (agentd's worker, or the one baseline process, plus Redis) gets the
    first CPU this process may use; the load generator the others. On one CPU nothing
    is pinned and the results say the generator shares the server's core.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return [], [], "one CPU: server and load generator share it (nothing pinned)"
    server, load = cpus[:1], cpus[1:]
    text = (
        f"server (agentd worker or baseline process, and Redis) on CPU {server[0]}; "
        f"load generator on CPU {','.join(map(str, load))}; the harness itself idles "
        f"on the load CPUs"
    )
    return server, load, text


@dataclass(frozen=True)
class Settings:
    """Durations in seconds; concurrency is open connections (closed loop)."""

    mode: str  # full | quick | tiny
    duration: float
    warmup: float
    concurrencies: tuple[int, ...]  # the throughput-vs-concurrency sweep
    main_concurrency: int  # every other HTTP and WebSocket measurement
    ws_idle: int  # idle WebSocket connections to open
    rate_fractions: tuple[float, ...]  # open-loop ladder, fractions of closed-loop capacity
    bisections: int
    open_duration: float  # one open-loop trial
    p99_bound_ms: float = 10.0
    soak_minutes: float = 0.0
    soak_rate: float = 0.0  # chat turns/s in the soak; 0: half of the probed capacity
    generator: str = "wrk"  # wrk | python (HTTP closed loop)
    noise_retries: int = 0  # measurements repeated because other processes used the CPUs
    server_cpus: list[int] = field(default_factory=list)
    load_cpus: list[int] = field(default_factory=list)
    layout: str = ""

    @property
    def all_cpus(self) -> list[int]:
        return sorted({*self.server_cpus, *self.load_cpus})


def _idle_limit() -> int:
    """Idle WebSockets a full run opens: as many as one worker's open-file limit allows."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1000, min(hard, 1_000_000) - 1000)


def settings_for(
    mode: str,
    soak_minutes: float = 0.0,
    p99_bound_ms: float = 10.0,
    generator: str = "wrk",
    soak_rate: float = 0.0,
) -> Settings:
    server, load, text = cpu_layout()
    common = dict(
        soak_minutes=soak_minutes,
        soak_rate=soak_rate,
        p99_bound_ms=p99_bound_ms,
        server_cpus=server,
        load_cpus=load or [],
        layout=text,
    )
    if mode == "tiny":
        return Settings(
            mode="tiny",
            duration=0.5,
            warmup=0.2,
            concurrencies=(4,),
            main_concurrency=4,
            ws_idle=50,
            rate_fractions=(0.5,),
            bisections=0,
            open_duration=0.5,
            **{**common, "generator": "python"},
        )
    if mode == "quick":
        return Settings(
            mode="quick",
            duration=2.0,
            warmup=0.5,
            concurrencies=(1, 64, 256),
            main_concurrency=64,
            ws_idle=2000,
            rate_fractions=(0.3, 0.5, 0.7, 0.9, 1.1),
            bisections=1,
            open_duration=2.0,
            generator=generator,
            noise_retries=6,
            **common,
        )
    return Settings(
        mode="full", duration=8.0, warmup=2.0, concurrencies=(1, 16, 64, 256, 1024),
        main_concurrency=64, ws_idle=_idle_limit(),
        rate_fractions=(0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2), bisections=2,
        open_duration=5.0, generator=generator, noise_retries=20, **common,
    )  # fmt: skip
