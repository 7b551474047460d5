"""The long fuzz run: ``python -m bench.fuzz [--inputs N] [--redis] [--workers W] [--seed S]``.

Starts ``agentd serve`` (2 workers on a redis-server it starts with ``--redis``, else
one worker on the in-memory store), sends N hostile inputs from :mod:`bench.fuzzgen`
over many concurrent connections (HTTP requests, raw malformed HTTP, WebSocket frames;
an input is one request, one raw connection or one frame), and prints the counts by
outcome, the violations (5xx, error bodies without a stable code, WebSockets that died),
worker restarts, leaked WebSocket handlers and locked sessions. Exits 1 if any.

Input ``i`` of a run is drawn from ``Random(f"{seed}:{i}")``: ``--only I`` prints it
again (the response ids it may name are the server's, so they are placeholders there).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from tests.procs import AgentdProcess, RedisServer

from .fuzzconn import FRAME_KINDS, raw_input, ws_input
from .fuzzgen import (
    ENDPOINTS,
    Context,
    HttpInput,
    Input,
    RawInput,
    WsInput,
    http_input,
)
from .fuzzsend import (
    Result,
    locked_sessions,
    scrape,
    send_http,
    send_raw,
    send_ws,
    server_config,
    total,
)

__all__ = ("main",)

SESSIONS = 12
SHOWN_VIOLATIONS = 20
SETTLE_S = 20.0  # how long handlers and leases get to go after the last input
GAUGE = "agentd_websocket_connections"
ROUTES = sorted(ENDPOINTS)


def draw(seed: int, index: int, ctx: Context) -> Input:
    """Input ``index`` of the run: 75% HTTP requests, 10% raw HTTP, 15% WebSockets."""
    rnd = random.Random(f"{seed}:{index}")
    pick = rnd.random()
    if pick < 0.75:
        return http_input(rnd, rnd.choice(ROUTES), ctx)
    if pick < 0.85:
        return raw_input(rnd, ctx)
    return ws_input(rnd, rnd.choice(FRAME_KINDS), ctx)


async def send(http: aiohttp.ClientSession, base: str, port: int, inp: Input) -> Result:
    if isinstance(inp, HttpInput):
        return await send_http(http, base, inp)
    if isinstance(inp, RawInput):
        return await send_raw("127.0.0.1", port, inp)
    return await send_ws(http, base, inp)


def weight(inp: Input) -> int:
    """How many inputs this is: a WebSocket connection counts its frames."""
    return len(inp.frames) if isinstance(inp, WsInput) else 1


async def prepare(http: aiohttp.ClientSession, base: str) -> Context:
    """Sessions and responses for the inputs to name: a background response, a
    foreground one, and a background one on a session."""
    sessions = [f"fz-keep-{i}" for i in range(SESSIONS)]
    for sid in sessions:
        async with http.post(base + "/v1/sessions", json={"id": sid}) as r:
            if r.status != 201:
                raise RuntimeError(f"creating session {sid}: {r.status} {await r.text()}")
    responses = []
    for extra in ({"background": True}, {}, {"background": True, "session_id": sessions[0]}):
        body = {"model": "echo", "input": "hi", **extra}
        async with http.post(base + "/v1/responses", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"creating a response: {r.status} {await r.text()}")
            responses.append(orjson.loads(await r.read())["id"])
    return Context(tuple(sessions), tuple(responses))


@dataclass
class Tally:
    inputs: int = 0
    labels: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the fuzzer's own failures

    def add(self, index: int, result: Result) -> None:
        self.labels.update(result.labels)
        self.violations.extend(f"input {index}: {v}" for v in result.violations)


async def run(
    base: str, port: int, inputs: int, concurrency: int, seed: int
) -> tuple[Tally, Context]:
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        ctx = await prepare(http, base)
        next_index = 0
        started = last_report = time.monotonic()

        async def worker() -> None:
            nonlocal next_index, last_report
            while tally.inputs < inputs:
                index, next_index = next_index, next_index + 1
                inp = draw(seed, index, ctx)
                tally.inputs += weight(inp)
                try:
                    tally.add(index, await send(http, base, port, inp))
                except Exception as exc:  # the fuzzer's, not the server's: count it apart
                    tally.labels[f"client {type(exc).__name__}"] += 1
                    tally.errors.append(f"input {index}: {exc!r}")
                now = time.monotonic()
                if now - last_report > 10:
                    last_report = now
                    rate = tally.inputs / (now - started)
                    print(f"  {tally.inputs} inputs, {rate:.0f}/s, "
                          f"{len(tally.violations)} violations", file=sys.stderr)  # fmt: skip

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally, ctx


async def settle(base: str, baseline: float, sids: list[str]) -> tuple[float, list[str]]:
    """The WebSocket gauge above its baseline and the locked sessions, once they stop
    changing or after SETTLE_S (a leak stays; a handler or turn still ending goes)."""
    deadline = time.monotonic() + SETTLE_S
    async with aiohttp.ClientSession() as http:
        while True:
            leaked = total(await scrape(http, base), GAUGE) - baseline
            locked = await locked_sessions(http, base, sids)
            if (leaked <= 0 and not locked) or time.monotonic() > deadline:
                return leaked, locked
            await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--inputs", type=int, default=100_000, help="inputs to send (default 100000)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="agentd workers (default 2 with --redis, else 1)"
    )
    parser.add_argument(
        "--redis", action="store_true", help="start a redis-server and use it as the store"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64, help="connections at once")
    parser.add_argument("--only", type=int, default=None, help="print input I of the seed")
    args = parser.parse_args(argv)
    if args.only is not None:
        ctx = Context(
            tuple(f"fz-keep-{i}" for i in range(SESSIONS)), ("resp_0", "resp_1", "resp_2")
        )
        print(draw(args.seed, args.only, ctx))
        return 0
    workers = args.workers or (2 if args.redis else 1)
    workdir = Path(tempfile.mkdtemp(prefix="agentd-fuzz-"))
    redis = RedisServer(workdir) if args.redis else None
    proc = AgentdProcess(workdir, server_config(workers, redis.url if redis else None), [], {})
    status = 2
    try:
        proc.wait_ready()
        status = asyncio.run(_report(proc, args, workers, redis))
    finally:
        proc.stop()
        if redis is not None:
            redis.close()
        if status:
            print(f"server log kept: {proc.log_path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


async def _report(
    proc: AgentdProcess, args: argparse.Namespace, workers: int, redis: RedisServer | None
) -> int:
    base = proc.url
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, base)
    pids = proc.worker_pids()
    started = time.monotonic()
    tally, ctx = await run(base, proc.port, args.inputs, args.concurrency, args.seed)
    elapsed = time.monotonic() - started
    leaked, locked = await settle(base, total(before, GAUGE), [*ctx.sessions, *ctx.spare])
    async with aiohttp.ClientSession() as http:
        after = await scrape(http, base)
    restarts = total(after, "agentd_worker_restarts_total") - total(
        before, "agentd_worker_restarts_total"
    )
    replaced = sorted(pids - proc.worker_pids())
    turn_keys = _turn_keys(redis) if redis else None
    requests = "agentd_http_requests_total{"
    counted = {k: v for k, v in after.items() if k.startswith(requests)}
    server_5xx = sum(v for k, v in counted.items() if 'status="5' in k)
    gone = sum(v for k, v in counted.items() if 'status="499"' in k)
    store = f"redis ({workers} workers)" if redis else "memory (1 worker)"
    print(f"command: {shlex.join(['python', '-m', 'bench.fuzz', *sys.argv[1:]])}")
    print(f"store: {store}; seed {args.seed}; {tally.inputs} inputs in {elapsed:.1f} s "
          f"({tally.inputs / elapsed:.0f}/s) over {args.concurrency} connections")  # fmt: skip
    print("outcomes:")
    for label, count in sorted(tally.labels.items()):
        print(f"  {count:>8}  {label}")
    client_5xx = sum(c for k, c in tally.labels.items() if k.split()[:2][-1].startswith("5"))
    print(f"5xx answers seen by clients: {client_5xx}")
    print(f"5xx counted by the server's metrics: {server_5xx:.0f}")
    print(f"clients that left before their answer (499 in the metrics): {gone:.0f}")
    print(f"violations: {len(tally.violations)}")
    kinds = collections.Counter(v.split(": ")[1] for v in tally.violations)
    for kind, count in kinds.most_common():
        print(f"  {count:>8}  {kind}")
    for line in tally.violations[:SHOWN_VIOLATIONS]:
        print(f"  {line}")
    print(f"fuzzer errors: {len(tally.errors)}")
    for line in tally.errors[:SHOWN_VIOLATIONS]:
        print(f"  {line}")
    print(f"worker restarts: {restarts:.0f} (workers replaced: {replaced or 'none'})")
    print(f"leaked websocket handlers (gauge above baseline): {leaked:.0f}")
    print(f"locked sessions: {len(locked)} {locked or ''}")
    if turn_keys is not None:
        print(f"turn leases left in redis: {turn_keys}")
    failed = client_5xx or server_5xx or tally.violations or tally.errors or restarts or replaced
    failed = failed or leaked > 0 or bool(locked)
    failed = failed or bool(turn_keys) or proc.proc.poll() is not None
    print("FAILED" if failed else "OK")
    return 1 if failed else 0


def _turn_keys(redis: RedisServer) -> int:
    import redis as redis_py

    with redis_py.Redis(port=redis.port) as client:
        return sum(1 for _ in client.scan_iter("agentd:s:*:turn"))


if __name__ == "__main__":
    sys.exit(main())
