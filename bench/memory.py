"""Redis memory per stored object, measured on a real ``agentd serve`` and its own Redis.

    .venv/bin/python -m bench.memory [--count 2000] [--out FILE]

Starts a redis-server on a free loopback port (never the system's) and one ``agentd
serve`` worker on it, then creates objects through the HTTP API, one kind at a time:
idle sessions, history messages of three sizes, L2 cache entries, shared-state
documents and background responses (run to their end). For each kind it reports Redis's
``used_memory`` growth (less the clients' buffers) divided by the number of objects
(what a sizing needs: keys, their values and Redis's per-key overhead), and per key
pattern the keys made, their mean ``MEMORY USAGE ... SAMPLES 0`` and how many carry a
TTL. Run it again with another ``--count`` to see the figures hold (Redis's hash tables
double in steps, which moves a kind's figure by up to ~150 B per object).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import aiohttp
import redis

from tests.procs import AgentdProcess, RedisServer

from .scenarios.redismem import data_bytes

CONCURRENCY = 32
# Long enough a history that a stream's first node (allocated whole, about 4 KB, see
# "first message") weighs little in the per-message figure.
MESSAGES_PER_SESSION = 50
MESSAGE_SIZES = (100, 1000, 10000)
DOC_SIZES = (100, 1000)

CONFIG = """
[server]
workers = 1
[redis]
urls = ["{url}"]
[cache]
disk_path = ""
# A single-flight stream stays this long after its reply: short, so that it is gone
# before the next kind is measured (its size is reported on its own).
flight_lease = 1.0
[[backends]]
name = "echo"
type = "echo"
[[agents]]
name = "echo"
backend = "echo"
[agents.cache]
mode = "off"
[[agents]]
name = "cached"
backend = "echo"
[agents.cache]
mode = "always"
ttl_s = 3600
"""

# Hash tags and ids vary per object: a key's pattern is its name with them blanked.
_TAG = re.compile(r"\{[^}]*\}")


def _pattern(key: bytes) -> str:
    return _TAG.sub("{…}", key.decode(errors="replace"))


def _snapshot(client: redis.Redis) -> tuple[int, dict[bytes, tuple[int, bool]]]:
    """``used_memory``, and every key's ``MEMORY USAGE`` (exact: SAMPLES 0) and whether
    it carries a TTL."""
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
        pipe.pttl(key)
    replies = pipe.execute()
    sizes = {k: (int(replies[2 * i] or 0), int(replies[2 * i + 1]) > 0) for i, k in enumerate(keys)}
    return _used(client), sizes


def _used(client: redis.Redis) -> int:
    """``used_memory`` less the clients' buffers: those grow with a big request (a long
    append) and shrink some time later, whatever is stored. ``mem_clients_normal`` is
    no measure of them (Redis updates it in the same cron that shrinks them), so the
    buffers are read from ``CLIENT LIST`` once they have shrunk (:func:`data_bytes`)."""
    where = client.connection_pool.connection_kwargs
    return data_bytes(f"redis://{where['host']}:{where['port']}")


def _by_pattern(
    before: dict[bytes, tuple[int, bool]], after: dict[bytes, tuple[int, bool]]
) -> dict[str, dict[str, Any]]:
    """Keys made (and the growth of keys that were there) per key pattern, and how many
    of them carry a TTL."""
    out: dict[str, dict[str, Any]] = {}
    for key, (size, ttl) in after.items():
        grown = size - before.get(key, (0, False))[0]
        if key in before and grown == 0:
            continue
        row = out.setdefault(_pattern(key), {"new_keys": 0, "bytes": 0, "with_ttl": 0})
        row["new_keys"] += key not in before
        row["bytes"] += grown
        row["with_ttl"] += ttl
    for row in out.values():
        if row["new_keys"]:
            row["mean_memory_usage"] = round(row["bytes"] / row["new_keys"])
    return dict(sorted(out.items()))


async def _many(count: int, make: Callable[[int], Awaitable[None]]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            await make(i)

    await asyncio.gather(*(one(i) for i in range(count)))


async def _post(http: aiohttp.ClientSession, url: str, body: Any, method: str = "POST") -> Any:
    async with http.request(method, url, json=body) as reply:
        if reply.status >= 300:
            raise RuntimeError(f"{method} {url}: {reply.status} {await reply.text()}")
        return await reply.json()


class Measure:
    def __init__(self, client: redis.Redis, quiet: bool) -> None:
        self.client = client
        self.quiet = quiet
        self.rows: dict[str, dict[str, Any]] = {}

    async def kind(
        self,
        name: str,
        objects: int,
        make: Callable[[], Awaitable[None]],
        transient: str = "",
        **facts: Any,
    ) -> None:
        """Measure ``make``; ``transient``: a key pattern whose keys expire soon after
        (single-flight streams), waited for before the lasting figure is taken."""
        used0, keys0 = _snapshot(self.client)
        await make()
        used1, keys1 = _snapshot(self.client)
        row: dict[str, Any] = {"objects": objects}
        if transient:
            row["used_memory_delta_with_transient"] = used1 - used0
            deadline = time.monotonic() + 60
            while any(True for _ in self.client.scan_iter(match=transient, count=1000)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"keys {transient} did not expire")
                await asyncio.sleep(0.2)  # Redis expires them in the background
            used1 = _used(self.client)
        per = (used1 - used0) / objects
        keys = _by_pattern(keys0, keys1)
        # The lasting keys only (not the transient ones, gone by now).
        lasting = sum(
            r["bytes"] for p, r in keys.items() if not (transient and fnmatchcase(p, transient))
        )
        usage = lasting / objects
        self.rows[name] = {
            **row,
            "used_memory_delta": used1 - used0,
            "bytes_per_object": round(per),
            "memory_usage_per_object": round(usage),
            "keys": keys,
            **facts,
        }
        if not self.quiet:
            print(
                f"  {name:<34} {per:>7.0f} B/object (used_memory)  {usage:>7.0f} "
                f"(MEMORY USAGE)   ({objects} objects)",
                flush=True,
            )


async def _run(base: str, client: redis.Redis, count: int, tag: str = "") -> dict[str, Any]:
    """Measure ``count`` objects of each kind (``tag``: in names, to make new ones)."""
    quiet = bool(tag)
    m = Measure(client, quiet)
    async with aiohttp.ClientSession() as http:
        sids: list[str] = []

        async def session(_: int) -> None:
            sids.append((await _post(http, f"{base}/v1/sessions", {}))["id"])

        await m.kind("idle session", count, lambda: _many(count, session))

        async def first(i: int) -> None:
            message = {"role": "user", "content": "x" * 100}
            await _post(http, f"{base}/v1/sessions/{sids[i]}/messages", {"messages": [message]})

        # A session's log is a stream, made with its first message.
        await m.kind(
            "first message of a session, 100 B",
            count,
            lambda: _many(count, first),
            content_bytes=100,
        )

        for size in MESSAGE_SIZES:
            text = "x" * size
            rooms: list[str] = []
            per_size = max(1, count // MESSAGES_PER_SESSION)

            async def room(_: int, rooms: list[str] = rooms) -> None:
                rooms.append((await _post(http, f"{base}/v1/sessions", {}))["id"])

            await _many(per_size, room)  # their own sessions: only messages are measured

            async def fill(i: int, rooms: list[str] = rooms, text: str = text) -> None:
                message = {"role": "user", "content": text}
                batch = {"messages": [message] * MESSAGES_PER_SESSION}
                await _post(http, f"{base}/v1/sessions/{rooms[i]}/messages", batch)

            await m.kind(
                f"history message, {size} B content",
                per_size * MESSAGES_PER_SESSION,
                lambda fill=fill, per_size=per_size: _many(per_size, fill),  # type: ignore[misc]
                content_bytes=size,
            )

        async def cached(i: int) -> None:
            # A distinct prompt each time: one new L2 entry per call (a reply of ~60 B).
            message = {"role": "user", "content": f"cache me {tag}{i}"}
            body = {"model": "cached", "messages": [message]}
            await _post(http, f"{base}/v1/chat/completions", body)

        await m.kind(
            "cache entry (L2)", count, lambda: _many(count, cached), transient="agentd:c:*:flight"
        )

        for size in DOC_SIZES:

            async def doc(i: int, size: int = size) -> None:
                body = {"v": "y" * (size - 8)}  # about `size` bytes of JSON
                await _post(http, f"{base}/v1/state/mem{size}{tag}/d{i}", body, "PUT")

            await m.kind(
                f"shared-state document, {size} B",
                count,
                lambda doc=doc: _many(count, doc),  # type: ignore[misc]
                document_bytes=size,
            )

        jobs = max(1, count // 4)
        rids: list[str] = []

        async def submit(i: int) -> None:
            body = {"model": "echo", "input": f"job {i}", "background": True}  # not cached
            rids.append((await _post(http, f"{base}/v1/responses", body))["id"])

        async def background() -> None:
            await _many(jobs, submit)

            async def ended(rid: str) -> bool:
                async with http.get(f"{base}/v1/responses/{rid}") as reply:
                    return (await reply.json())["status"] in ("completed", "failed")

            deadline = time.monotonic() + 120
            pending = list(rids)
            while pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(pending)} background responses did not end")
                pending = [r for r in pending if not await ended(r)]

        await m.kind("background response (ended)", jobs, background)
    return m.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="objects of each kind")
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="agentd-bench-memory-"))
    server = RedisServer(workdir)
    agentd = AgentdProcess(workdir, CONFIG.format(url=server.url), [], {})
    try:
        agentd.wait_ready()
        with redis.Redis(port=server.port) as client:
            version = client.info("server")["redis_version"]
            # First a few of each kind unmeasured: scripts loaded, connections made.
            asyncio.run(_run(agentd.url, client, 40, tag="warm"))
            print(f"redis {version}, {args.count} objects of each kind:")
            rows = asyncio.run(_run(agentd.url, client, args.count))
            allocator = client.info("memory").get("mem_allocator")
    finally:
        agentd.stop()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    results = {"redis_version": version, "mem_allocator": allocator, "kinds": rows}
    for name, row in rows.items():
        print(f"{name}:")
        for pattern, keys in row["keys"].items():
            print(f"    {pattern:<32} {json.dumps(keys)}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
