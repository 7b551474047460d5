"""``jobs``: background responses (``POST /v1/responses`` with ``background: true``).

Three figures from one run, each against a baseline measured in the same run:

1. **Jobs/s drained** by agentd with 1 worker and with 2 (echo backend, latency 0, Redis):
   a submitter posts N jobs as fast as it can (its rate is recorded), and the drain lasts
   from the first job's ``created`` to the last one's ``done`` (both read from the
   records in Redis afterwards; completion is watched through the queue streams'
   lengths, never with GETs that would compete for the server's CPU).
2. **Enqueue-to-start latency** of those same jobs: ``started - created`` from each
   record, p50/p90/p99/p99.9.
3. **Interactive p99 with and without a job backlog**: stateless chat turns (not
   cacheable: ``temperature`` 1) at a fixed concurrency with the 2-worker agentd, once
   with no jobs and once while a backlog of jobs drains.

The submitter is this module's own command (``python -m bench.scenarios.jobs submit``),
run pinned to the load CPUs like the other generators.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import targets
from ..loadgen.httpconn import HttpConnection, encode_request
from ..measure import MAX_ATTEMPTS, NOISY, SATURATED, Bench, Served
from ..procstat import cpu_seconds, machine_cpu, wait_quiet
from ..settings import Settings
from ..stats import ratio, summarize
from ..targets import pinned
from .common import Scenario, have, ratio_row

__all__ = ("JOBS",)

# A job: a background response on the echo agent, its input different per job.
JOB_BODY = '{"model":"echo","input":"job %d: hello there","background":true}'
# The interactive turn: temperature 1 is never cached (the cache's "deterministic" mode
# keeps temperature 0 only), and no session, so each request really runs a turn.
INTERACTIVE_CHAT = (
    '{"model":"echo","messages":[{"role":"user","content":"hello there"}],"temperature":1}'
)
CHAT_CONNECTIONS = 16
SUBMIT_CONNECTIONS = 128
# Jobs submitted per drain, per mode.
JOBS_PER_MODE = {"tiny": 200, "quick": 2000, "full": 5000}
# The default partition's queue: agentd's defaults ([jobs] queue_shards).
PARTITION = "default"
QUEUE_SHARDS = 4
JOB_CONCURRENCY = 32  # [jobs] concurrency: jobs running at once per worker
POLL_S = 0.05  # how often the queue's length is read while jobs drain
DRAIN_LIMIT_S = 300.0  # the longest a drain may take before the scenario fails
# The most jobs submitted to build the backlog, per mode.
BACKLOG_MAX = {"tiny": 1000, "quick": 20_000, "full": 40_000}
BACKLOG_MARGIN = 1.5  # the backlog holds this many times what the chat window drains
# Noisy measurements this scenario may repeat, at most (from the run's budget): each
# repeat costs a drain or a whole backlog, so a busy machine lengthens it by a bound.
RETRIES = 3


# -- the submitter (its own process, pinned to the load CPUs) -----------------------------


class _BodyConnection(HttpConnection):
    """A kept-alive connection that keeps each response's bytes (for the job's id)."""

    last = b""

    def answered(self, buf: bytearray, size: int) -> None:
        self.last = bytes(buf[:size])


async def _submit(host: str, port: int, count: int, connections: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ids: list[str | None] = [None] * count
    errors: dict[str, int] = {}
    numbers = itertools.count()
    hostport = f"{host}:{port}"

    async def connect() -> _BodyConnection:
        _, conn = await loop.create_connection(_BodyConnection, host, port)
        return conn

    async def one(conn: _BodyConnection) -> None:
        while (i := next(numbers)) < count:
            payload = encode_request("POST", hostport, "/v1/responses", (JOB_BODY % i).encode())
            try:
                status = await conn.request(payload)
            except (OSError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                conn.close()
                await asyncio.sleep(0.01)
                try:
                    conn = await connect()
                except OSError:
                    return
                continue
            if status != 200:
                errors[f"status {status}"] = errors.get(f"status {status}", 0) + 1
                continue
            body = conn.last.split(b"\r\n\r\n", 1)[1]
            ids[i] = json.loads(body)["id"]
        conn.close()

    conns = await asyncio.gather(*(connect() for _ in range(connections)))
    print("submit-start", flush=True)  # the harness reads the server's CPU from here
    started = time.time()
    await asyncio.gather(*(one(conn) for conn in conns))
    ended = time.time()
    done = [rid for rid in ids if rid is not None]
    return {
        "ids": done,
        "submitted": len(done),
        "errors": errors,
        "error_count": sum(errors.values()),
        "t_start": started,
        "t_end": ended,
        "rate": round(len(done) / max(ended - started, 1e-9), 1),
    }


def _submit_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scenarios.jobs submit",
        description="POST --count background responses (echo agent) to --url as fast as "
        "--connections kept-alive connections allow; write their ids and timings as JSON.",
    )
    parser.add_argument("--url", required=True, help="agentd's base URL (loopback only)")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--connections", type=int, default=SUBMIT_CONNECTIONS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from urllib.parse import urlsplit

    parts = urlsplit(args.url)
    host, port = parts.hostname or "", parts.port or 80
    if host not in ("127.0.0.1", "localhost") and not host.startswith("127."):
        raise SystemExit(f"refusing {host}: the submitter only targets loopback addresses")
    try:
        import uvloop

        result = uvloop.run(_submit(host, port, args.count, args.connections))
    except ImportError:  # pragma: no cover - uvloop is an agentd dependency
        result = asyncio.run(_submit(host, port, args.count, args.connections))
    usage = os.times()
    result["cpu_s"] = round(usage.user + usage.system, 3)
    args.out.write_text(json.dumps(result))


# -- reading the queue and the records -----------------------------------------------------
# Keys come from agentd's own helpers, imported where used: the submitter, whose CPU
# time is measured, never needs them.


def _depth(client: Any) -> int:
    """Jobs waiting or running: acknowledged entries leave the streams."""
    from agentd.store.keys import queue_key

    pipe = client.pipeline(transaction=False)
    for shard in range(QUEUE_SHARDS):
        pipe.xlen(queue_key(PARTITION, shard))
    return sum(int(n) for n in pipe.execute())


def _records(client: Any, ids: list[str]) -> list[tuple[str, float, float, float]]:
    """(status, created, started, done) of each job, read in a few pipelines."""
    from agentd.store.keys import record_keys

    out = []
    for start in range(0, len(ids), 1000):
        pipe = client.pipeline(transaction=False)
        for rid in ids[start : start + 1000]:
            pipe.hmget(record_keys(rid)[0], "status", "created", "started", "done")
        for status, created, started, done in pipe.execute():
            out.append(
                (
                    (status or b"missing").decode(),
                    float(created or "nan"),
                    float(started or "nan"),
                    float(done or "nan"),
                )
            )
    return out


def _submit_command(bench: Bench, url: str, count: int) -> tuple[list[str], Path]:
    """The submitter's command, pinned to the load CPUs (as the report shows it), and
    the file it writes."""
    out = bench.workdir / f"submit-{time.monotonic_ns()}.json"
    cmd = [
        sys.executable, "-m", "bench.scenarios.jobs", "submit", "--url", url,
        "--count", str(count), "--connections", str(SUBMIT_CONNECTIONS),
    ]  # fmt: skip
    return pinned(cmd, bench.settings.load_cpus), out


def _run_submitter(
    cmd: list[str], out: Path, on_start: Callable[[], None] | None = None
) -> tuple[dict[str, Any], float]:
    """Run the submitter (``on_start`` is called once its connections are open); its
    result and its CPU seconds."""
    full = [*cmd, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with open(out.with_suffix(".stderr"), "w+") as err:  # a file: it cannot fill up
        proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("submit-start") and on_start is not None:
                on_start()
        code = proc.wait(timeout=DRAIN_LIMIT_S)
        err.seek(0)
        stderr = err.read()
    out.with_suffix(".stderr").unlink()
    if code != 0 or not out.exists():
        raise RuntimeError(f"submitter failed ({code}): {stderr[-2000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    return result, result.pop("cpu_s", 0.0)


# -- the scenario ------------------------------------------------------------------------

# The instance that builds the backlog takes no job itself: it consumes only this
# partition, which has no agents (the echo agent's jobs stay in "default").
GATEWAY = "bench-gateway"
GATEWAY_CONFIG = f'\n[[partitions]]\nname = "{GATEWAY}"\n'
START_ALLOWANCE_S = 1.0  # slack for the backlog beyond the chat's warm-up and window
TOP_COMMANDS = 12  # Redis commands per job listed (the most frequent)
# Redis commands the harness itself sends (never counted as agentd's).
OWN_COMMANDS = frozenset({"info", "client|setinfo", "client|setname", "hello", "flushall"})


class _Queue:
    """The harness's own view of the queue and the records, straight from Redis."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.polls = 0

    def close(self) -> None:
        self.client.close()

    def depth(self) -> int:
        self.polls += 1
        return _depth(self.client)

    def wait_drained(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while self.depth() > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs still queued after {limit:g} s")
            time.sleep(POLL_S)

    def commands(self) -> tuple[dict[str, int], int]:
        """Commands Redis has run so far, by name; and how many queue polls we made."""
        stats = self.client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(st["calls"]) for name, st in stats.items()}
        return calls, self.polls

    def per_job(self, before: tuple[dict[str, int], int], jobs: int) -> dict[str, float]:
        """Commands per job since ``before`` (Lua scripts count once as ``evalsha`` and
        once per command they run inside), less the harness's own polls."""
        (start, polls0), (end, polls1) = before, self.commands()
        delta = {k: end[k] - start.get(k, 0) for k in end if k not in OWN_COMMANDS}
        delta["xlen"] = delta.get("xlen", 0) - QUEUE_SHARDS * (polls1 - polls0)
        per = {k: round(v / max(jobs, 1), 2) for k, v in delta.items() if v > 0}
        return dict(sorted(per.items(), key=lambda kv: -kv[1])[:TOP_COMMANDS])

    def records(self, ids: list[str]) -> list[tuple[str, float, float, float]]:
        return _records(self.client, ids)

    def flush(self) -> None:
        self.client.flushall()


def _drain_once(
    bench: Bench, served: Served, cpus: list[int], queue: _Queue, count: int
) -> dict[str, Any]:
    """Submit ``count`` jobs to ``served``, wait until the queue is empty, read the records."""
    cmd, out = _submit_command(bench, served.target.url(), count)
    before = queue.commands()
    mark: dict[str, Any] = {}

    def start() -> None:  # the submitter's connections are open: the window begins
        mark.update(cpu=cpu_seconds(served.cpu_pids()), t=time.monotonic(), box=machine_cpu())

    submitted, gen_cpu = _run_submitter(cmd, out, start)
    cpu0, t0, box0 = mark["cpu"], mark["t"], mark["box"]
    queued = queue.depth()
    queue.wait_drained(DRAIN_LIMIT_S)
    t1, box1 = time.monotonic(), machine_cpu()
    cpu1 = cpu_seconds(served.cpu_pids())
    calls = queue.per_job(before, submitted["submitted"])
    rows = queue.records(submitted["ids"])
    done = [r for r in rows if r[0] == "completed"]
    errors = dict(submitted["errors"])
    for status, *_ in rows:
        if status != "completed":
            errors[f"job {status}"] = errors.get(f"job {status}", 0) + 1
    first = min((r[1] for r in rows), default=math.nan)
    last = max((r[3] for r in done), default=math.nan)
    drain_s = last - first
    # After the last submission: the queue drains with nothing else for the server to do.
    tail = [r for r in done if r[3] > submitted["t_end"]]
    tail_s = last - submitted["t_end"]
    result: dict[str, Any] = {
        "generator": "python",
        "requests": len(done),
        "rps": round(len(done) / drain_s, 1) if drain_s > 0 else 0.0,
        "latency_ms": summarize([r[2] - r[1] for r in done]),
        "errors": errors,
        "error_count": sum(errors.values()),
        "jobs": count,
        "drain_s": round(drain_s, 3),
        "submit_s": round(submitted["t_end"] - submitted["t_start"], 3),
        "submit_rate": submitted["rate"],
        "queued_at_submit_end": queued,
        "after_submit_jobs_per_s": round(len(tail) / tail_s, 1)
        if queued >= 100 and tail_s > 0
        else None,
        "run_ms": summarize([r[3] - r[2] for r in done]),
        "redis_calls_per_job": calls,
        "generator_cpu_util": round(gen_cpu / max(t1 - t0, 1e-9), 3),
    }
    bench._noise(result, box0, box1, cpu1 - cpu0 + gen_cpu, t1 - t0)
    result = bench._server_side(served, result, cmd, cpu1 - cpu0, t0, t1)
    shared = set(bench.settings.load_cpus) & set(cpus)  # the submitter on a server CPU
    busy = result["server_cpu_util"] + (result["generator_cpu_util"] if shared else 0.0)
    if queued <= JOB_CONCURRENCY * served.workers:
        result["limited_by"] = "submitter (no backlog built: the drain rate is a floor)"
    elif busy >= SATURATED * len(cpus) and result["limited_by"] != "server":
        result["limited_by"] = "server (its CPUs, the submitter's share included)"
    return result


def _drain(
    bench: Bench, served: Served, cpus: list[int], queue: _Queue, count: int
) -> dict[str, Any]:
    run = bench._quietest(lambda: _drain_once(bench, served, cpus, queue, count))
    run.update(
        concurrency=SUBMIT_CONNECTIONS, path="/v1/responses", method="POST",
        label=f"drain {count} jobs",
    )  # fmt: skip
    return bench._finish(run)


def _prefill(
    bench: Bench, redis_url: str, redis_pid: int, queue: _Queue, count: int
) -> dict[str, Any]:
    """Queue ``count`` jobs through an agentd that runs none of them (the gateway)."""
    cm = targets.agentd(
        bench.workdir, bench.settings.server_cpus, workers=1, redis_url=redis_url,
        name="agentd-gateway", extra_config=GATEWAY_CONFIG, args=("--partitions", GATEWAY),
    )  # fmt: skip
    with bench.serve(cm, extra_pids=[redis_pid]) as gateway:
        cmd, out = _submit_command(bench, gateway.target.url(), count)
        before = queue.commands()
        cpu0 = cpu_seconds(gateway.cpu_pids())
        submitted, _ = _run_submitter(cmd, out)
        cpu = cpu_seconds(gateway.cpu_pids()) - cpu0
        calls = queue.per_job(before, submitted["submitted"])
    n = submitted["submitted"]
    return {
        "command": shlex.join(cmd),
        "jobs": n,
        "errors": submitted["error_count"],
        "submit_rate": submitted["rate"],
        "queued": queue.depth(),
        "submit_cpu_s_per_1k_jobs": round(cpu / n * 1000.0, 4) if n else None,
        "redis_calls": calls,
    }


def _chat(bench: Bench, served: Served, label: str) -> dict[str, Any]:
    return bench.http(
        served, "/v1/chat/completions", method="POST", body=INTERACTIVE_CHAT,
        concurrency=CHAT_CONNECTIONS, label=label,
    )  # fmt: skip


def _backlog_chat(
    bench: Bench, redis: Any, queue: _Queue, cpus: list[int], backlog: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One try: fill the queue through the gateway, then start the 2-worker agentd (it
    drains at once) and measure the chat load while it does."""
    queue.flush()  # nothing is connected now: a clean queue
    fill = _prefill(bench, redis.url, redis.proc.pid, queue, backlog)
    cm_name = "agentd-2w-backlog"
    cm = targets.agentd(bench.workdir, cpus, workers=2, redis_url=redis.url, name=cm_name)
    with bench.serve(cm, workers=2, extra_pids=[redis.proc.pid]) as served:
        at_start, t0 = queue.depth(), time.monotonic()
        saved, bench.retries_left = bench.retries_left, 0  # a retry needs a new backlog
        try:
            run = _chat(bench, served, "chat + job backlog")
        finally:
            bench.retries_left = saved
        left, elapsed = queue.depth(), time.monotonic() - t0
    # This try's server commands (a later try would overwrite them in the record).
    commands = {k: bench.record["server_commands"][k] for k in ("agentd-gateway", cm_name)}
    info = {
        **fill,
        "server_commands": commands,
        "queued_when_chat_began": at_start,
        "queued_when_chat_ended": left,
        "jobs_per_s_drained_during_chat": round((at_start - left) / elapsed, 1),
    }
    return run, info


def _backlog_quietest(
    bench: Bench, redis: Any, queue: _Queue, cpus: list[int], backlog: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """As Bench._quietest: a noisy try is repeated (with a new backlog) within budget."""
    runs = bench.record["runs"]
    best = _backlog_chat(bench, redis, queue, cpus, backlog)
    attempts = 1
    while (
        best[0].get("other_cpu_util", 0.0) > NOISY
        and attempts < MAX_ATTEMPTS
        and bench.retries_left > 0
    ):
        bench.retries_left -= 1
        wait_quiet(10.0)
        again = _backlog_chat(bench, redis, queue, cpus, backlog)
        attempts += 1
        worse = again if again[0]["other_cpu_util"] >= best[0]["other_cpu_util"] else best
        runs.remove(worse[0])
        best = best if worse is again else again
    best[0]["attempts"] = attempts
    bench.record["server_commands"].update(best[1].pop("server_commands"))
    return best


def _backlog_size(bench: Bench, count: int, drain: dict[str, Any]) -> int:
    """Enough jobs to outlast the chat run: what the 2-worker drain would empty over the
    warm-up, the window and some slack, times the margin (bounded per mode)."""
    s = bench.settings
    rate = max(drain["rps"], drain.get("after_submit_jobs_per_s") or 0.0)
    need = rate * (START_ALLOWANCE_S + s.warmup + s.duration) * BACKLOG_MARGIN
    return int(min(BACKLOG_MAX[s.mode], max(count, math.ceil(need / 100) * 100)))


def run_jobs(bench: Bench) -> None:
    if not have("redis-server"):
        bench.record["status"] = "skipped"
        bench.record["reason"] = "background jobs need Redis here: redis-server is missing"
        return
    budget = bench.retries_left
    bench.retries_left = mine = min(budget, RETRIES)
    try:
        _run_jobs(bench)
    finally:
        bench.retries_left = budget - (mine - bench.retries_left)


def _run_jobs(bench: Bench) -> None:
    s = bench.settings
    count = JOBS_PER_MODE[s.mode]
    cpus2 = s.all_cpus[:2]
    notes = bench.record.setdefault("notes", [])
    notes.append(
        f"Background responses (POST /v1/responses, background: true, echo agent, latency "
        f"0, Redis mode, [jobs] defaults: {JOB_CONCURRENCY} jobs at once per worker, "
        f"{QUEUE_SHARDS} queue streams). 1 worker on CPU {s.server_cpus} vs 2 workers on "
        f"CPUs {cpus2}; Redis on CPU {s.server_cpus}; the submitter and the chat load on "
        f"CPUs {s.load_cpus} (on 2 cores the second worker shares its core with them)."
    )
    notes.append(
        f"Drain rows: the submitter posts {count} jobs over {SUBMIT_CONNECTIONS} "
        "connections as fast as it can while the workers drain them; req/s is jobs/s "
        "drained = completed jobs / (last `done` - first `created`, from the records); "
        "the latency columns are enqueue-to-start (`started - created`: queueing in a "
        "burst, so it grows with the backlog); CPU s/1k req is agentd + Redis CPU per "
        "1,000 jobs, submissions included. Completion is watched through the queue "
        "streams' lengths (4 XLEN per 50 ms), never with GETs."
    )
    figures: dict[str, Any] = {"jobs_per_drain": count}
    drains: dict[int, dict[str, Any]] = {}
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        queue = _Queue(redis.url)
        try:
            cm = targets.agentd(
                bench.workdir, s.server_cpus, workers=1, redis_url=redis.url, name="agentd-1w"
            )
            with bench.serve(cm, workers=1, extra_pids=[redis.proc.pid]) as served:
                drains[1] = _drain(bench, served, s.server_cpus, queue, count)
        finally:
            queue.close()
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        queue = _Queue(redis.url)
        try:
            cm = targets.agentd(
                bench.workdir, cpus2, workers=2, redis_url=redis.url, name="agentd-2w"
            )
            with bench.serve(cm, workers=2, extra_pids=[redis.proc.pid]) as served:
                drains[2] = _drain(bench, served, cpus2, queue, count)
                quiet = _chat(bench, served, "chat, no jobs")
            backlog = _backlog_size(bench, count, drains[2])
            loaded, info = _backlog_quietest(bench, redis, queue, cpus2, backlog)
        finally:
            queue.close()
    for workers, run in drains.items():
        figures[f"drain_{workers}w"] = {
            "jobs_per_s": run["rps"],
            "drain_s": run["drain_s"],
            "submit_rate": run["submit_rate"],
            "queued_at_submit_end": run["queued_at_submit_end"],
            "after_submit_jobs_per_s": run["after_submit_jobs_per_s"],
            "enqueue_to_start_p50_ms": run["latency_ms"]["p50"],
            "enqueue_to_start_p99_ms": run["latency_ms"]["p99"],
            "run_p50_ms": run["run_ms"]["p50"],
            "run_p99_ms": run["run_ms"]["p99"],
            "cpu_s_per_1k_jobs": run["server_cpu_s_per_1k"],
        }
        figures[f"redis_calls_per_job_{workers}w"] = run["redis_calls_per_job"]
    figures["redis_calls_per_submission"] = info.pop("redis_calls")
    figures["backlog"] = info
    figures["interactive"] = {
        "p99_ms_no_jobs": quiet["latency_ms"]["p99"],
        "p99_ms_with_backlog": loaded["latency_ms"]["p99"],
        "p99_ratio": ratio(loaded["latency_ms"]["p99"], quiet["latency_ms"]["p99"]),
        "rps_no_jobs": quiet["rps"],
        "rps_with_backlog": loaded["rps"],
    }
    bench.record["figures"] = figures
    one, two = drains[1], drains[2]
    label = "jobs drained"
    rows = [
        ("jobs_per_s", "jobs/s", True, two["rps"], one["rps"]),
        ("server_cpu_s_per_1k", "CPU s/1k jobs", False,
         two["server_cpu_s_per_1k"], one["server_cpu_s_per_1k"]),
        ("enqueue_start_p50", "enqueue-to-start p50 ms", False,
         two["latency_ms"]["p50"], one["latency_ms"]["p50"]),
        ("enqueue_start_p99", "enqueue-to-start p99 ms", False,
         two["latency_ms"]["p99"], one["latency_ms"]["p99"]),
    ]  # fmt: skip
    tail1, tail2 = one["after_submit_jobs_per_s"], two["after_submit_jobs_per_s"]
    if tail1 and tail2:  # both queues outlasted their submitters: the drain alone
        rows.insert(1, ("after_submit_jobs_per_s", "jobs/s after the last submission", True,
                        tail2, tail1))  # fmt: skip
    ratios = [
        ratio_row(m, u, b, "agentd-2w", "agentd-1w", label, 0, x, y, (two, one))
        for m, u, b, x, y in rows
    ]
    chat_label = "chat with job backlog"
    ratios += [
        ratio_row(m, u, b, "agentd-2w", "no backlog", chat_label, CHAT_CONNECTIONS, x, y,
                  (loaded, quiet))
        for m, u, b, x, y in (
            ("rps", "req/s", True, loaded["rps"], quiet["rps"]),
            ("p99", "p99 ms", False, loaded["latency_ms"]["p99"], quiet["latency_ms"]["p99"]),
        )
    ]  # fmt: skip
    bench.record["ratios"] = ratios
    for workers, run in drains.items():
        if run["limited_by"].startswith("submitter"):
            notes.append(
                f"The {workers}-worker drain never built a backlog (the submitter was slower "
                "than the workers): its jobs/s is a floor."
            )
    notes.append(
        f"Interactive rows: stateless chat turns (temperature 1: never cached; no session) "
        f"over {CHAT_CONNECTIONS} connections, with agentd-2w once the queue is empty "
        f"('chat, no jobs') and with agentd-2w-backlog, started (same config, same CPUs) "
        f"on a queue of {info['jobs']} jobs that agentd-gateway put there first (the same "
        f'config plus `[[partitions]] name = "{GATEWAY}"` with no agents, run with '
        f"`--partitions {GATEWAY}`: it takes no job of the default partition); the load starts "
        f"when it is ready. {info['queued_when_chat_began']} jobs were waiting when the "
        f"chat load began and {info['queued_when_chat_ended']} when it ended."
    )
    if info["queued_when_chat_ended"] == 0:
        notes.append(
            "The backlog ran out before the chat load ended: part of the 'with backlog' "
            "window had no jobs, so its ratio understates the interference."
        )


def _estimate(s: Settings) -> float:
    """About: two drains (submitter at ~600 jobs/s), two chat runs, and the backlog
    (gateway at ~1,500 jobs/s, sized for a 2-worker drain near 1,400 jobs/s)."""
    drains = 2 * (2.5 + JOBS_PER_MODE[s.mode] / 600.0)
    chats = 2 * (s.warmup + s.duration + 0.5)
    backlog = min(
        BACKLOG_MAX[s.mode], 1400 * (START_ALLOWANCE_S + s.warmup + s.duration) * BACKLOG_MARGIN
    )
    return drains + chats + 4.0 + backlog / 1500.0


JOBS = Scenario(
    "jobs",
    "background responses on the job queue (echo, Redis): jobs/s drained and "
    "enqueue-to-start latency with 1 worker vs 2, and chat p99 with vs without a job "
    "backlog draining",
    run_jobs,
    _estimate,
)

if __name__ == "__main__":
    if sys.argv[1:2] != ["submit"]:
        raise SystemExit(
            "usage: python -m bench.scenarios.jobs submit --url URL --count N --out FILE"
        )
    _submit_main(sys.argv[2:])
