"""The work of a worker's front for the cache-hit chat turn, in process and on a virtual
clock, so that ``valgrind --tool=callgrind`` counts the same instructions run after run.

    .venv/bin/python -m bench.front_hit [--keys] [--requests 4000] [--agentd-root PATH]

    valgrind --tool=callgrind --zero-before=getppid --dump-before=getpgid \\
        .venv/bin/python -m bench.front_hit --keys --requests 4000

Starts a throw-away redis-server and, in this process, the application of one worker
with ``http-chat-auth``'s config (``--keys``: API keys and every limit on, a key of that
scenario's limits; without: ``auth.mode = "none"``), then feeds one connection of its
front (:class:`agentd.server.front.FrontConnection`, on a transport that keeps what is
written) the request ``http-chat-auth`` sends, ``--requests`` times, one request per
event-loop pass, as a keep-alive client does. The clock the worker reads (``time`` and
the event loop's) moves :data:`STEP_S` per request and stands still otherwise, so the
timers (the limiter's flush, the leases' refresh) fire per request as at
1/STEP_S requests a second however slow the process runs (under valgrind, 50 times
slower). Redis is real.

The measured requests run between a call of ``os.getppid()`` and one of
``os.getpgid(0)`` (libc's ``getppid`` and ``getpgid``, which nothing else here calls),
so callgrind's ``--zero-before=getppid --dump-before=getpgid`` writes their cost alone
to the first dump (``callgrind.out.<pid>.1``); divide its total by ``--requests``. Each
request is fed through ``itertools.starmap``, so the inclusive cost of ``starmap_next``
in that dump (``callgrind_annotate --inclusive=yes``) is the front's own work for the
requests, apart from what the loop's other tasks did meanwhile (Redis's replies, the
limiter's writes and lease calls), which moves with Redis's timing.
Without valgrind it prints the CPU seconds per request instead (noisy, unlike the
counts).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# The clock's step per request: ~5000 requests a second, http-chat-auth's order.
STEP_S = 0.0002
# Requests before the measured ones: the reply cached, the leases granted.
WARM = 500


class Clock:
    """A clock that moves only when told (``time``'s functions and the event loop's)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._wall = time.time() - time.monotonic()
        self._real = (time.time, time.monotonic, time.perf_counter)

    def install(self) -> None:
        self.now = time.monotonic()
        time.monotonic = lambda: self.now  # type: ignore[assignment]
        time.perf_counter = lambda: self.now  # type: ignore[assignment]
        time.time = lambda: self._wall + self.now  # type: ignore[assignment]

    def uninstall(self) -> None:
        time.time, time.monotonic, time.perf_counter = self._real  # type: ignore[assignment]


class Transport:
    """What the front writes to, kept (only the last answer)."""

    def __init__(self) -> None:
        self.last = b""
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.last = data
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:  # never reached: answers are taken at once
        raise AssertionError("paused")

    def resume_reading(self) -> None:
        raise AssertionError("resumed")

    def close(self) -> None:
        raise AssertionError("closed")


def chat_post(body: str, headers: str = "") -> bytes:
    """A ``POST /v1/chat/completions`` of ``body`` as a client sends it (``headers``: more
    header lines, each ending in CRLF)."""
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}"
    return (head + "\r\n" + body).encode()


def connect(front: Any, transport: Transport) -> Any:
    """A connection of the worker's ``front`` (None: this agentd has none) on
    ``transport``."""
    assert front is not None, "this agentd has no front"
    conn = front()
    conn.connection_made(transport)
    return conn


async def measured(run: Callable[[int], Awaitable[None]], requests: int) -> float:
    """``run(requests)`` between callgrind's markers (module docstring); its CPU seconds."""
    started = time.process_time()
    os.getppid()  # callgrind: --zero-before=getppid
    await run(requests)
    os.getpgid(0)  # callgrind: --dump-before=getpgid
    return time.process_time() - started


async def serve(keyed: bool, requests: int, redis_url: str, clock: Clock) -> dict[str, Any]:
    from aiohttp import web

    from agentd.auth.keys import new_key
    from agentd.config import from_dict
    from agentd.server.app import create_app
    from agentd.server.front import front_for
    from agentd.server.keys import STORE
    from agentd.store import KeyRecord

    from .scenarios.auth import AUTH_CONFIG, KEY_LIMITS
    from .scenarios.common import HIT_CHAT
    from .targets import AGENTD_CONFIG

    text = AGENTD_CONFIG.format(
        workers=1, redis=f'[redis]\nurls = ["{redis_url}"]', backend_type="echo", urls="[]"
    )
    config = from_dict(tomllib.loads(text + (AUTH_CONFIG if keyed else "")))
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    headers = ""
    if keyed:
        made = new_key()
        record = KeyRecord(
            made.id, "bench", made.secret_hash, name="load", scopes=("chat",), limits=KEY_LIMITS
        )
        await app[STORE].keyring.create(record)
        headers = f"Authorization: Bearer {made.key}\r\n"
    request = chat_post(HIT_CHAT, headers)
    front = front_for(app, runner.server)  # type: ignore[arg-type]
    assert front is None or front.chat is not None, "this agentd's front answers no chat"
    transport = Transport()
    conn = connect(front, transport)

    suspended = [0]
    args = ((request,),)

    async def run(n: int) -> None:
        for _ in range(n):
            clock.now += STEP_S
            # Through itertools.starmap: callgrind's inclusive cost of its C function
            # (starmap_next) is the front's own work for the request, without the other
            # tasks of the loop (Redis replies, the limiter's writes).
            for _ in itertools.starmap(conn.data_received, args):
                pass
            busy = conn.busy
            if busy is not None:  # a miss, or an admission asked of the store
                suspended[0] += 1
                await asyncio.wait([busy])
            await asyncio.sleep(0)

    clock.install()
    try:
        await run(WARM)  # the reply cached, the key verified, the leases granted
        writes = transport.writes
        suspended[0] = 0
        cpu = await measured(run, requests)
    finally:
        clock.uninstall()
    last = transport.last
    answers = transport.writes - writes
    conn.connection_lost(None)
    await runner.cleanup()
    head_text = last.split(b"\r\n\r\n", 1)[0].decode()
    return {
        "agentd": str(Path(sys.modules["agentd"].__file__ or "").parent),
        "mode": "keys" if keyed else "none",
        "requests": requests,
        "answers": answers,
        "suspended": suspended[0],
        "cpu_us_per_request": round(cpu / requests * 1e6, 2),
        "last_head": head_text.split("\r\n"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.front_hit", description=__doc__)
    parser.add_argument("--keys", action="store_true", help="API keys and every limit on")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--agentd-root", type=Path, help="measure another checkout's agentd")
    args = parser.parse_args()
    if args.agentd_root is not None:
        sys.path.insert(0, str(args.agentd_root.resolve()))
    from . import targets  # imports agentd: after the checkout under test is first

    with (
        tempfile.TemporaryDirectory(prefix="agentd-front-hit-") as workdir,
        targets.redis(Path(workdir), []) as redis,
    ):
        clock = Clock()
        result = asyncio.run(serve(args.keys, args.requests, redis.url, clock))
    print(json.dumps(result))
    if result["answers"] != args.requests or "X-Cache: hit-l1" not in result["last_head"]:
        sys.exit(f"not every request was answered as an L1 hit: {result}")


if __name__ == "__main__":
    main()
