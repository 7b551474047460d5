"""HTTP scenarios: the generator's ceiling, hello, chat (hit and miss), streaming."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable
from typing import Any

from .. import targets
from ..measure import Bench, Served
from .common import HIT_CHAT, SESSION_CHAT, STREAM_CHAT, Scenario, compare, create_sessions, have
from .common import run_seconds as _secs

__all__ = ("CEILING", "HTTP_CHAT_HIT", "HTTP_CHAT_MISS", "HTTP_HELLO", "HTTP_STREAM")

CACHE_NOTES = {
    "absent": "This agentd has no response cache (no X-Cache header): its figure is the same "
    "stateless echo turn computed every time, not a cache hit. The FastAPI baseline does "
    "answer from its in-process dict cache.",
    "hit": "agentd answers from its response cache: X-Cache is {state!r} on the repeated "
    "request (temperature 0, the default 'deterministic' cache mode). The FastAPI baseline "
    "answers from its in-process dict cache.",
}


def _baselines(bench: Bench, wanted: tuple[str, ...]) -> list[str]:
    """The baselines this run can start (tiny runs use only the Python-only ones)."""
    out = []
    for name in wanted:
        if name == "nginx" and (bench.settings.mode == "tiny" or not have("nginx")):
            bench.record.setdefault("notes", []).append(
                "nginx baseline skipped: not installed"
                if bench.settings.mode != "tiny"
                else "nginx baseline skipped (tiny run)"
            )
            continue
        if name == "fastapi" and (
            bench.settings.mode == "tiny" or not have("fastapi") or not have("uvicorn")
        ):
            bench.record.setdefault("notes", []).append(
                "FastAPI baseline skipped: "
                + (
                    "tiny run"
                    if bench.settings.mode == "tiny"
                    else "install with pip install -e '.[bench]'"
                )
            )
            continue
        out.append(name)
    return out


# agentd with its front turned off (server.front, agentd/server/front.py): every request
# through aiohttp, the baseline the front is measured against in the same run.
FRONT_OFF = "agentd-front-off"


def _target(bench: Bench, name: str, redis_url: str | None = None) -> Any:
    cpus, wd = bench.settings.server_cpus, bench.workdir
    if name == "agentd":
        return targets.agentd(wd, cpus, redis_url=redis_url)
    if name == FRONT_OFF:
        env = {"AGENTD_SERVER__FRONT": "false"}
        return targets.agentd(wd, cpus, redis_url=redis_url, name=name, env=env)
    if name == "nginx":
        return targets.nginx(wd, cpus)
    if name == "aiohttp":
        return targets.aiohttp_baseline(wd, cpus)
    if name == "fastapi":
        return targets.fastapi_baseline(wd, cpus, redis_url)
    raise ValueError(name)


def _each(
    bench: Bench,
    names: list[str],
    measure: Callable[[str, Served], None],
    redis_url: str | None = None,
    extra_pids: list[int] | None = None,
) -> None:
    for name in names:
        with bench.serve(_target(bench, name, redis_url), extra_pids=extra_pids) as served:
            measure(name, served)


# -- the generator's ceiling ------------------------------------------------------------


def run_ceiling(bench: Bench) -> None:
    """wrk and the Python generator against nginx ``return 200``: the most they can show."""
    s = bench.settings
    bench.record["summary"] = CEILING.summary
    if not have("nginx"):
        bench.record["status"] = "skipped"
        bench.record["reason"] = "nginx is not installed"
        return
    figures: dict[str, Any] = {}
    with bench.serve(targets.nginx(bench.workdir, s.server_cpus)) as served:
        gens = ["wrk", "python"] if have("wrk") else ["python"]
        for gen in gens:
            run = bench.http(
                served,
                "/healthz",
                concurrency=s.main_concurrency,
                generator=gen,
                label=f"{gen} ceiling",
            )
            figures[gen] = {
                "rps": run["rps"],
                "generator_cpu_util": run["generator_cpu_util"],
                "server_cpu_util": run["server_cpu_util"],
                "limited_by": run["limited_by"],
            }
    bench.record["figures"] = figures


CEILING = Scenario(
    "generator-ceiling",
    "the load generators against nginx `return 200` (1 worker): the highest req/s they "
    "can show on this machine; a result near it is flagged as generator-limited",
    run_ceiling,
    lambda s: _secs(s, 2),
)

# -- http-hello -------------------------------------------------------------------------


def _front_off(bench: Bench) -> list[str]:
    """agentd with its front off beside it, but in a tiny run (a smoke run: the baselines
    it needs and no more)."""
    return [] if bench.settings.mode == "tiny" else [FRONT_OFF]


def run_hello(bench: Bench) -> None:
    names = ["agentd", *_front_off(bench), *_baselines(bench, ("nginx", "aiohttp", "fastapi"))]

    def measure(name: str, served: Served) -> None:
        for c in bench.settings.concurrencies:
            bench.http(served, "/healthz", concurrency=c)

    _each(bench, names, measure)
    compare(bench, baselines=tuple(n for n in names if n != "agentd"))


HTTP_HELLO = Scenario(
    "http-hello",
    "GET /healthz: the smallest request, per concurrency level",
    run_hello,
    lambda s: _secs(s, 4 * len(s.concurrencies), 4),
)

# -- http-chat-hit ----------------------------------------------------------------------


def _x_cache(url: str) -> str:
    """agentd's ``X-Cache`` on one chat request ("absent" without a cache). urllib sends
    ``Connection: close``, so every call is a fresh connection: a new source port, which
    the kernel's ``SO_REUSEPORT`` hash may hand to any worker."""
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=HIT_CHAT.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers.get("X-Cache", "absent")


def _warm_cache(url: str, workers: int, limit: int = 64) -> tuple[list[str], int]:
    """Send the request on fresh connections until every worker has answered it once and
    the last answer is an L1 hit; the ``X-Cache`` states seen, and the workers warmed.

    A worker's first answer is never an L1 hit: a ``miss`` (it computes the reply and
    stores it in its L1, in Redis and in the on-disk L3), ``hit-l2`` (from Redis) or
    ``hit-l3`` (from the disk cache, which agentd keeps under its working directory, the
    run's, so an earlier agentd of this run may have filled it); each fills the worker's
    L1, and every later answer is ``hit-l1``. So the answers other than ``hit-l1`` count
    the workers that hold the reply in their L1. With one worker this is the old "send it
    twice" (``miss``, ``hit-l1``)."""
    states: list[str] = []
    while len(states) < limit:
        states.append(_x_cache(url))
        firsts = sum(state != "hit-l1" for state in states)
        if len(states) < 2:
            continue
        if states[-1] == "hit-l1" and firsts >= workers:
            break
        if states[-1] not in ("miss", "hit-l1", "hit-l2", "hit-l3") or firsts > workers:
            break  # no cache (absent, bypass) or one that does not keep it: nothing to warm
    return states, min(workers, sum(state != "hit-l1" for state in states))


def _cache_note(bench: Bench, served: Served, workers: int) -> str:
    """Warm agentd's cache, record what ``X-Cache`` said, and the note saying it."""
    states, warmed = _warm_cache(served.target.url(), workers)
    name = served.target.name
    state = states[-1]
    bench.record["cache" if workers == 1 else f"cache_{name}"] = state
    bench.record["figures"].setdefault("x_cache", {})[name] = " > ".join(states)
    if workers == 1:
        if state.startswith("hit"):
            return CACHE_NOTES["hit"].format(state=state)
        default = f"agentd's X-Cache on the repeated request is {state!r}: not a hit."
        return CACHE_NOTES.get(state, default)
    seen = f"X-Cache on {len(states)} fresh connections: {', '.join(states)}"
    if state == "hit-l1" and warmed >= workers:
        return (
            f"{name}: {seen}. A worker's first answer is never hit-l1 (it is a miss, hit-l2 "
            "from Redis or hit-l3 from the disk cache, and fills the worker's L1) and every "
            f"later one is, so {warmed} answers other than hit-l1 mean all {workers} workers "
            "held the reply in their own L1 before the load began: its figure is L1 hits "
            "in every worker."
        )
    if state == "hit-l1":
        return (
            f"{name}: {seen}; only {warmed} of {workers} workers answered before the load "
            "(the kernel's SO_REUSEPORT hash); the load's warm-up reaches the others, whose "
            "first answer comes from Redis (L2) and later ones from their L1."
        )
    return f"{name}: {seen}: not a cache hit."


def _redis_commands(port: int) -> int | None:
    """redis-server's ``total_commands_processed`` (this INFO included), or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"INFO stats\r\n")
            data = b""
            while b"total_commands_processed:" not in data or not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":", 1)[1])
    return None


def _chat_hit_workers(bench: Bench, aiohttp: bool) -> None:
    """The 2-worker pair at the main concurrency: agentd with 2 workers (Redis mode) and
    the aiohttp baseline with 2 processes, both on the first 2 CPUs; then the ratios
    agentd-2w / aiohttp-2p and agentd-2w / agentd-1w."""
    s = bench.settings
    notes = bench.record["notes"]
    if not have("redis-server"):
        notes.append(
            "2-worker pair skipped: more than one agentd worker needs Redis, and "
            "redis-server is missing."
        )
        return
    cpus2, c = s.all_cpus[:2], s.main_concurrency
    where = f"on CPUs {cpus2}" if cpus2 else "unpinned (one CPU)"
    notes.append(
        f"The 2-worker pair, at {c} connections only: agentd with 2 workers (agentd-2w, Redis "
        "mode, which more than one worker needs; Redis on CPU "
        f"{s.server_cpus or '-'}, its CPU counted in agentd-2w's) and the bare aiohttp "
        "baseline with 2 processes (aiohttp-2p: one SO_REUSEPORT socket per process on the "
        f"same port, as agentd's workers have), both {where}, pinned like workers-scaling; "
        f"the load generator stays on CPUs {s.load_cpus}, so on a 2-core machine it shares "
        "a core with the second worker or process: their req/s and p99 are a floor, and CPU "
        "per request is the figure to read (workers-scaling's CPU-bounded variant, every "
        "worker under the same CPU quota, is the one that says whether the workers scale). "
        "agentd-1w in the ratios is the 1-worker agentd "
        "run above, without Redis (a hit is an L1 hit in either mode; Redis mode's own cost, "
        "redis-server's CPU included, is in agentd-2w's figures only)."
    )
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        cm = targets.agentd(bench.workdir, cpus2, workers=2, redis_url=redis.url, name="agentd-2w")
        with bench.serve(cm, workers=2, extra_pids=[redis.proc.pid]) as served:
            notes.append(_cache_note(bench, served, workers=2))
            before = _redis_commands(redis.port)
            run = bench.http(
                served, "/v1/chat/completions", method="POST", body=HIT_CHAT, concurrency=c
            )
            after = _redis_commands(redis.port)
    if before is not None and after is not None:
        # Less this harness's own two INFO commands.
        commands = max(0, after - before - 1)
        bench.record["figures"]["redis_during_agentd_2w_load"] = {
            "commands": commands,
            "requests_in_window": run.get("requests"),
        }
        touched = commands > 0.01 * (run.get("requests") or 0)
        notes.append(
            f"Redis processed {commands:,} commands while agentd-2w was under load (warm-up "
            f"and window, {run.get('requests') or 0:,} requests in the window): "
            + (
                "the hits did reach Redis (L2), not only each worker's L1."
                if touched
                else "the hits did not touch Redis (L1 hits in each worker)."
            )
        )
    if aiohttp:
        cm = targets.aiohttp_baseline(bench.workdir, cpus2, processes=2, name="aiohttp-2p")
        with bench.serve(cm, workers=2) as served:
            bench.http(served, "/v1/chat/completions", method="POST", body=HIT_CHAT, concurrency=c)
        compare(bench, agentd="agentd-2w", baselines=("aiohttp-2p",))
    first = len(bench.record["ratios"])
    compare(bench, agentd="agentd-2w", baselines=("agentd",))
    for r in bench.record["ratios"][first:]:
        r["baseline"] = "agentd-1w"  # the column workers-scaling fills too


def run_chat_hit(bench: Bench) -> None:
    names = ["agentd", *_front_off(bench), *_baselines(bench, ("aiohttp", "fastapi"))]

    def measure(name: str, served: Served) -> None:
        if name == "agentd":
            bench.record["notes"].append(_cache_note(bench, served, workers=1))
        elif name == FRONT_OFF:
            _warm_cache(served.target.url(), 1)
        for c in bench.settings.concurrencies:
            bench.http(served, "/v1/chat/completions", method="POST", body=HIT_CHAT, concurrency=c)

    _each(bench, names, measure)
    compare(bench, baselines=tuple(n for n in names if n != "agentd"))
    _chat_hit_workers(bench, aiohttp="aiohttp" in names)


HTTP_CHAT_HIT = Scenario(
    "http-chat-hit",
    "POST /v1/chat/completions, the same request every time (echo agent, no session, "
    "temperature 0): the cached turn, agentd with 1 worker at each concurrency and with 2 "
    "workers (Redis mode) at the main one, against the bare aiohttp handler with 1 and 2 "
    "processes; the notes say whether agentd's cache answered",
    run_chat_hit,
    lambda s: _secs(s, 3 * len(s.concurrencies) + 2, 3 + 2) + 1.0,
)

# -- http-chat-miss ---------------------------------------------------------------------


def run_chat_miss(bench: Bench) -> None:
    s = bench.settings
    if not have("redis-server") or s.generator != "wrk" or not have("wrk"):
        bench.record["status"] = "skipped"
        bench.record["reason"] = "needs redis-server and wrk (sessions rotate in wrk's Lua)"
        return
    names = ["agentd", *_baselines(bench, ("fastapi",))]
    bench.record.setdefault("notes", []).append(
        "Each request is a turn on one of 4 x concurrency sessions (rotated per request), "
        "appended through Redis; server CPU includes the redis-server process."
    )
    c = s.main_concurrency
    with targets.redis(bench.workdir, s.server_cpus) as redis:

        def measure(name: str, served: Served) -> None:
            sessions = create_sessions(served.target.url(), 4 * c)
            bench.http(
                served,
                "/v1/chat/completions",
                method="POST",
                body=SESSION_CHAT,
                sessions=sessions,
                concurrency=c,
            )

        _each(bench, names, measure, redis_url=redis.url, extra_pids=[redis.proc.pid])
    compare(bench, baselines=tuple(n for n in names if n != "agentd"))


HTTP_CHAT_MISS = Scenario(
    "http-chat-miss",
    "POST /v1/chat/completions with a session: echo backend (latency_ms = 0), history "
    "read and the turn appended through Redis",
    run_chat_miss,
    lambda s: _secs(s, 2, 3) + 1.0,
)

# -- http-stream ------------------------------------------------------------------------


def run_stream(bench: Bench) -> None:
    names = ["agentd", *_baselines(bench, ("aiohttp", "fastapi"))]
    bench.record.setdefault("notes", []).append(
        "A request is timed to the end of its SSE stream (role chunk, 2 content chunks, "
        "finish chunk, [DONE]); the aiohttp baseline writes the same chunks at /stream."
    )

    def measure(name: str, served: Served) -> None:
        path = "/stream" if name == "aiohttp" else "/v1/chat/completions"
        bench.http(
            served,
            path,
            method="POST",
            body=STREAM_CHAT,
            concurrency=bench.settings.main_concurrency,
        )

    _each(bench, names, measure)
    compare(bench, baselines=tuple(n for n in names if n != "agentd"))


HTTP_STREAM = Scenario(
    "http-stream",
    "POST /v1/chat/completions with stream: true (Server-Sent Events), echo agent",
    run_stream,
    lambda s: _secs(s, 3, 3),
)
