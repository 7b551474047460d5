"""The fuzz suite's shared pieces: hypothesis's settings and source of draws, and one
fuzzed ``agentd serve`` per test module and store, checked when the module is done.

The inputs themselves come from :mod:`bench.fuzzgen`, which the long runner
(``python -m bench.fuzz``) uses too: its generators take a ``random.Random``, and here
that is hypothesis's ``st.randoms()``, whose every draw hypothesis makes, so an example
is repeatable (``derandomize``: the same examples on every run) and shrinks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis as redis_py
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bench.fuzz import GAUGE, prepare, settle
from bench.fuzzgen import Context, HttpInput, Input, RawInput
from bench.fuzzsend import Result, scrape, send_http, send_raw, send_ws, server_config, total

from .procs import AgentdProcess, RedisServer

__all__ = ("FUZZ", "Fuzzed", "check", "draws", "fuzzed_server")

# Deterministic (CI sees the same examples every run) and bounded: the whole fuzz slice
# of `make test` stays around a minute on two cores. Every example is a real request to
# a real server, so hypothesis's speed checks do not apply.
FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

draws = st.randoms(use_true_random=False)


@dataclass
class Fuzzed:
    """A fuzzed ``agentd serve``: what exists on it, and how to send it an input."""

    proc: AgentdProcess
    ctx: Context
    redis: RedisServer | None

    def send(self, inp: Input) -> Result:
        return asyncio.run(self._send(inp))

    async def _send(self, inp: Input) -> Result:
        if isinstance(inp, RawInput):
            return await send_raw("127.0.0.1", self.proc.port, inp)
        async with aiohttp.ClientSession() as http:
            if isinstance(inp, HttpInput):
                return await send_http(http, self.proc.url, inp)
            return await send_ws(http, self.proc.url, inp)


async def _prepare(url: str) -> tuple[Context, dict[str, float]]:
    async with aiohttp.ClientSession() as http:
        return await prepare(http, url), await scrape(http, url)


def fuzzed_server(store: str, workdir: Path) -> Iterator[Fuzzed]:
    """Start agentd (one worker in memory, two on a Redis of its own) for a module's
    examples; afterwards, check that they left nothing behind: no WebSocket handler (the
    gauge is back at its baseline), no session locked (a new turn on every session the
    inputs named is served), no turn lease in Redis, the same workers (none restarted),
    no 5xx in the server's own count."""
    redis = RedisServer(workdir) if store == "redis" else None
    config = server_config(2 if redis else 1, redis.url if redis else None)
    proc = AgentdProcess(workdir, config, [], {})
    try:
        proc.wait_ready()
        ctx, before = asyncio.run(_prepare(proc.url))
        pids = proc.worker_pids()
        yield Fuzzed(proc, ctx, redis)
        leaked, locked = asyncio.run(
            settle(proc.url, total(before, GAUGE), [*ctx.sessions, *ctx.spare])
        )
        after = asyncio.run(_scrape(proc.url))
        assert proc.proc.poll() is None, proc.log()
        assert leaked <= 0, f"{leaked} WebSocket handler(s) left running"
        assert not locked, f"sessions still locked: {locked}"
        assert proc.worker_pids() == pids, "a worker was replaced"
        restarts = "agentd_worker_restarts_total"
        assert total(after, restarts) == total(before, restarts)
        # Also no 5xx that no client saw (inside a stream nobody read to its end).
        errors = {k: v for k, v in after.items() if k.startswith("agentd_http_requests_total{")}
        assert not [k for k in errors if 'status="5' in k], errors
        if redis is not None:
            with redis_py.Redis(port=redis.port) as client:
                assert list(client.scan_iter("agentd:s:*:turn")) == []
    finally:
        proc.stop()
        if redis is not None:
            redis.close()


async def _scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        return await scrape(http, url)


def check(fuzzed: Fuzzed, inp: Input) -> None:
    """Send one input; fail with every property it broke."""
    result = fuzzed.send(inp)
    assert not result.violations, "\n".join(result.violations)
