"""HTTP scenarios: the generator's ceiling, hello, chat (hit and miss), streaming."""

from __future__ import annotations

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


def _target(bench: Bench, name: str, redis_url: str | None = None) -> Any:
    cpus, wd = bench.settings.server_cpus, bench.workdir
    if name == "agentd":
        return targets.agentd(wd, cpus, redis_url=redis_url)
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


def run_hello(bench: Bench) -> None:
    names = ["agentd", *_baselines(bench, ("nginx", "aiohttp", "fastapi"))]

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


def _cache_state(url: str) -> str:
    """agentd's ``X-Cache`` on the second identical request ("absent" with no cache)."""
    headers: dict[str, str] = {}
    for _ in range(2):
        request = urllib.request.Request(
            url + "/v1/chat/completions",
            data=HIT_CHAT.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            headers = dict(response.headers)
    return headers.get("X-Cache", "absent")


def run_chat_hit(bench: Bench) -> None:
    names = ["agentd", *_baselines(bench, ("aiohttp", "fastapi"))]

    def measure(name: str, served: Served) -> None:
        if name == "agentd":
            state = bench.record["cache"] = _cache_state(served.target.url())
            if state.startswith("hit"):
                note = CACHE_NOTES["hit"].format(state=state)
            else:
                default = f"agentd's X-Cache on the repeated request is {state!r}: not a hit."
                note = CACHE_NOTES.get(state, default)
            bench.record["notes"].append(note)
        for c in bench.settings.concurrencies:
            bench.http(served, "/v1/chat/completions", method="POST", body=HIT_CHAT, concurrency=c)

    _each(bench, names, measure)
    compare(bench, baselines=tuple(n for n in names if n != "agentd"))


HTTP_CHAT_HIT = Scenario(
    "http-chat-hit",
    "POST /v1/chat/completions, the same request every time (echo agent, no session, "
    "temperature 0): the cached turn; the note says whether agentd's cache answered",
    run_chat_hit,
    lambda s: _secs(s, 3 * len(s.concurrencies), 3),
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
