"""A focused reproduction, not a test: POSTs (and streamed turns) through the shipped nginx
config while the instances restart one after another (SIGTERM, wait, start again); prints
the answers by status, nginx's upstream errors and its 502 lines. A request failed by a
restart shows up as a 502 here. Run from the repository root:

    .venv/bin/python -m tests.lb_restart_repro CYCLES POST_LANES STREAM_LANES   # e.g. 6 8 4
"""

from __future__ import annotations

import asyncio
import collections
import signal
import sys
import tempfile
from pathlib import Path

import aiohttp

from . import lb
from .procs import RedisServer


async def main(cycles: int, lanes: int, streams: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="lb-restart-"))
    redis = RedisServer(work / "redis")
    statuses: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()
    try:
        with lb.behind(lb.Nginx, work, redis.url) as (instances, balancer):
            url = balancer.url
            async with aiohttp.ClientSession() as http:

                async def plain() -> None:
                    while not stop.is_set():
                        try:
                            async with http.post(url + "/v1/sessions", json={}) as r:
                                await r.read()
                                statuses[f"plain {r.status}"] += 1
                        except aiohttp.ClientError as exc:
                            statuses[f"plain {exc!r}"[:80]] += 1

                async def streamed() -> None:
                    body = {
                        "model": "echo",
                        "stream": True,
                        "messages": [{"role": "user", "content": "a b c d e f g h i j"}],
                    }
                    while not stop.is_set():
                        try:
                            async with http.post(url + "/v1/chat/completions", json=body) as r:
                                await r.read()
                                statuses[f"stream {r.status}"] += 1
                        except aiohttp.ClientError as exc:
                            statuses[f"stream {exc!r}"[:80]] += 1

                tasks = [asyncio.create_task(plain()) for _ in range(lanes)]
                tasks += [asyncio.create_task(streamed()) for _ in range(streams)]
                for n in range(cycles):
                    i = n % len(instances.ports)
                    proc = instances.procs[i]
                    proc.send(signal.SIGTERM)
                    assert await asyncio.to_thread(proc.wait_exit) == 0
                    await asyncio.to_thread(instances.start_again, i)
                    print(n, dict(statuses), flush=True)
                stop.set()
                await asyncio.gather(*tasks)
            print("final", dict(statuses))
            log = (balancer.dir / "error.log").read_text(errors="replace")
            kinds: collections.Counter[str] = collections.Counter()
            for line in log.splitlines():
                if "[error]" in line or ("upstream" in line and "[info]" not in line):
                    kinds[line.split(", client")[0].split("] ", 1)[-1][:160]] += 1
            for k, v in kinds.most_common():
                print(v, k)
            access = (balancer.dir / "access.log").read_text(errors="replace")
            for line in access.splitlines():
                if " 502 " in line:
                    print(line)
    finally:
        redis.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
