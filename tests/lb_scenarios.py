"""The load-balancer tests' scenarios, the same behind every balancer (tests/lb.py):
kill -9 of one instance, SIGTERM of one, a rolling restart of all three, each under the
mixed load of tests/lb_load.py, each checked against the store afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from .lb import Balancer, Instances, behind, kill
from .lb_load import Load, traffic
from .procs import AgentdProcess, metric
from .waiting import wait_until

# A request that failed must have been in flight at the kill, or sent in the moment
# after it, before the balancer saw the dead instance's pooled connections closed (a
# POST sent on one fails: it cannot be retried, it was sent). Seen: within 3 ms.
KILL_GRACE_S = 0.5
# A session whose turn died with its instance answers again within this (the lease).
USABLE_AGAIN_S = 3.0
FIGURES = Path(tempfile.gettempdir()) / "agentd-lb-figures"


def record(balancer: str, scenario: str, figures: dict[str, Any]) -> None:
    """Keep the figures of the last run (in the temporary directory) for the docs."""
    FIGURES.mkdir(exist_ok=True)
    (FIGURES / f"{balancer}-{scenario}.json").write_bytes(orjson.dumps(figures))


async def _job_runner(instances: Instances, load: Load) -> int:
    """The index of the instance that runs the load's background job."""
    found = await wait_until(
        lambda: (i := instances.running_job(load.job_id)) is not None and [i],
        what="a worker to take the job",
    )
    return int(found[0])


async def _websocket_on(load: Load, proc: AgentdProcess) -> int:
    """Open WebSocket clients until one is on ``proc`` (it must then come back through
    the balancer); how many are. HAProxy's leastconn sends a new connection to the
    instance serving the fewest streams, and the job's runner may be serving more for a
    while, so it can take a dozen clients before one lands there."""
    while not metric(proc, "agentd_websocket_connections") and len(load.ws) < 24:
        load.add_ws_client()
        await traffic(load, 5)
    found = int(metric(proc, "agentd_websocket_connections") or 0)
    assert found, "no WebSocket client landed on the instance"
    return found


async def kill_9_one_instance(kind: type[Balancer], workdir: Path, redis_url: str) -> None:
    """kill -9 of the instance running the background job, mid-load, with the session
    hash on: only requests in flight fail; nothing acknowledged is lost; WebSockets
    resume; the job finishes elsewhere; a session whose turn died is usable within 3 s."""
    with behind(kind, workdir, redis_url, session_hash=True) as (instances, balancer):
        load = Load(balancer.url)
        try:
            await traffic(load, 30)
            await load.start_job()
            victim = await _job_runner(instances, load)
            proc = instances.procs[victim]
            ws_on_victim = await _websocket_on(load, proc)
            # A long turn straight on the victim: its session's lease dies with it.
            doomed = await load.new_session()
            long_turn = asyncio.create_task(load.slow_turn(proc.url, doomed))
            await wait_until(lambda: instances.turn_held(doomed), what="the long turn's lease")
            await traffic(load, 10)

            in_flight = load.running
            killed_at = time.monotonic()
            kill(proc)
            usable_s = await load.turn_answered_s(doomed, since=killed_at)
            with contextlib.suppress(Exception):
                await long_turn
            assert long_turn.done() and (long_turn.exception() or not long_turn.result())
            await traffic(load, 40)
            job = await load.wait_job()
            assert job["status"] == "completed", job
            assert load.job_text(job) == load.job_words
            runner = instances.running_job(load.job_id)
            assert runner is not None and runner != victim
            await load.finish()
            verified = await load.verify()
            failures = load.failures()
            cut_off = [f for f in failures if f.started <= killed_at]
            just_after = [f for f in failures if f.started > killed_at]
            assert len(cut_off) <= in_flight
            # Every client that was on the victim came back through the balancer.
            assert sum(c.reconnects for c in load.ws) >= ws_on_victim
            late = [f for f in just_after if f.started > killed_at + KILL_GRACE_S]
            assert late == [], f"requests sent well after the kill failed: {late}"
            recovery_s = max(usable_s, load.recovery_s(killed_at))
            assert recovery_s < USABLE_AGAIN_S, recovery_s
            figures = load.report(
                f"{kind.name} kill -9",
                in_flight_at_kill=in_flight,
                failed_in_flight=len(cut_off),
                failed_sent_just_after=len(just_after),
                ws_on_victim=ws_on_victim,
                messages_verified=verified,
                usable_again_s=round(recovery_s, 2),
                job="finished elsewhere",
            )
            record(kind.name, "kill", figures)
        except BaseException:
            print(instances.logs()[-20000:], balancer.log()[-10000:])
            raise
        finally:
            await load.close()


async def sigterm_one_instance(kind: type[Balancer], workdir: Path, redis_url: str) -> None:
    """SIGTERM of the instance running the job mid-load: not one request fails."""
    with behind(kind, workdir, redis_url) as (instances, balancer):
        load = Load(balancer.url, resend_unstored=True)
        try:
            await traffic(load, 30)
            await load.start_job()
            victim = await _job_runner(instances, load)
            proc = instances.procs[victim]
            ws_on_victim = await _websocket_on(load, proc)
            proc.send(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait_exit) == 0
            await traffic(load, 30)
            job = await load.wait_job()
            assert job["status"] == "completed" and load.job_text(job) == load.job_words
            await load.finish()
            verified = await load.verify()
            figures = load.report(
                f"{kind.name} SIGTERM", ws_on_victim=ws_on_victim, messages_verified=verified
            )
            record(kind.name, "sigterm", figures)
            assert load.failures() == []
            assert sum(c.reconnects for c in load.ws) >= ws_on_victim
        except BaseException:
            print(instances.logs()[-20000:], balancer.log()[-10000:])
            raise
        finally:
            await load.close()


async def rolling_restart(kind: type[Balancer], workdir: Path, redis_url: str) -> None:
    """Each instance in turn: SIGTERM, wait for it to exit, start it again, wait until
    it is ready (and, where the balancer says, back in rotation): not one request fails."""
    with behind(kind, workdir, redis_url) as (instances, balancer):
        load = Load(balancer.url, resend_unstored=True)
        try:
            await traffic(load, 20)
            await load.start_job()
            for i, port in enumerate(instances.ports):
                proc = instances.procs[i]
                proc.send(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait_exit) == 0
                await asyncio.to_thread(instances.start_again, i)
                await wait_until(lambda p=port: balancer.routes_to(p), what="back in rotation")
                await traffic(load, 10)
            job = await load.wait_job()
            assert job["status"] == "completed" and load.job_text(job) == load.job_words
            await load.finish()
            verified = await load.verify()
            figures = load.report(f"{kind.name} rolling restart", messages_verified=verified)
            record(kind.name, "rolling", figures)
            assert load.failures() == []
        except BaseException:
            print(instances.logs()[-20000:], balancer.log()[-10000:])
            raise
        finally:
            await load.close()
