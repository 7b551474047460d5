"""The cost of a WebSocket chat turn in one worker, as ``ws-turns`` runs it, counted so
that ``valgrind --tool=callgrind`` gives the same figure run after run.

    .venv/bin/python -m bench.ws_turn_cost [--turns 6400] [--connections 64] [--agentd-root PATH]

    valgrind --tool=callgrind --zero-before=getppid --dump-before=getpgid \\
        .venv/bin/python -m bench.ws_turn_cost --turns 6400

Serves, in this process on a uvloop loop, the application of one standalone worker
(in-memory store, ``echo`` agent: ``ws-turns``'s config) on a loopback port, as a worker
does (its front, then aiohttp), and starts a client process (not under valgrind: it is
another program) that opens ``--connections`` WebSockets, sends ``hello`` on each,
then runs turns back to back on every one (``message`` → ``delta``… → ``done``, the
message ``ws-turns`` sends): :data:`WARM` per connection first, then ``--turns`` in
all, measured. The client says on its stdout when the measured turns start and when
they have all ended; between the two this process calls ``os.getppid()`` and then
``os.getpgid(0)`` (libc's ``getppid`` and ``getpgid``, which nothing else here calls),
so callgrind's ``--zero-before=getppid --dump-before=getpgid`` writes the worker's cost
of the measured turns alone to the first dump (``callgrind.out.<pid>.1``); divide its
total (``callgrind_annotate`` prints it) by ``--turns``. Everything the worker does in
between counts: reading and parsing frames, the turns, the store, the watch, writing.

Without valgrind it prints the worker's CPU seconds per turn over the same window
(noisy, unlike the counts). ``--agentd-root`` measures another checkout's agentd (e.g. a
clean copy of ``main``) with this harness.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

# Turns per connection before the measured ones: sessions, caches and pools warm.
WARM = 20
# What ws-turns sends (bench/loadgen/common.py's Spec.content).
CONTENT = "hello there, how are you today?"
ROOT = Path(__file__).resolve().parent.parent


async def _client(port: int, connections: int, turns: int) -> None:
    """The load: runs in a process of its own (``--client``)."""
    import aiohttp
    import orjson

    url = f"http://127.0.0.1:{port}/v1/ws"
    left = [turns]
    frames = [0]

    async def turn(ws: aiohttp.ClientWebSocketResponse, turn_id: int) -> None:
        await ws.send_str(
            orjson.dumps({"type": "message", "id": turn_id, "content": CONTENT}).decode()
        )
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"connection ended: {msg.type.name}")
            frames[0] += 1
            frame = orjson.loads(msg.data)
            if frame.get("type") == "error":
                raise RuntimeError(f"error frame: {frame}")
            if frame.get("type") == "done" and frame.get("id") == turn_id:
                return

    async def warm(ws: aiohttp.ClientWebSocketResponse, index: int) -> None:
        await ws.send_str('{"type":"hello"}')
        while orjson.loads((await ws.receive()).data).get("type") != "ready":
            pass
        for n in range(WARM):
            await turn(ws, index * 10_000_000 + n)

    async def measured(ws: aiohttp.ClientWebSocketResponse, index: int) -> None:
        n = WARM
        while left[0] > 0:
            left[0] -= 1
            n += 1
            await turn(ws, index * 10_000_000 + n)

    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sockets = [await session.ws_connect(url, max_msg_size=0) for _ in range(connections)]
        await asyncio.gather(*(warm(ws, i) for i, ws in enumerate(sockets)))
        print("start", flush=True)
        sys.stdin.readline()  # the server has marked the start
        frames[0] = 0
        await asyncio.gather(*(measured(ws, i) for i, ws in enumerate(sockets)))
        print(f"end {frames[0]}", flush=True)
        sys.stdin.readline()  # the server has marked the end
        await asyncio.gather(*(ws.close() for ws in sockets))


async def _serve(turns: int, connections: int) -> dict[str, Any]:
    from aiohttp import web

    from agentd.config import from_dict
    from agentd.proc import heap
    from agentd.server.app import create_app
    from agentd.server.front import front_for

    from .targets import AGENTD_CONFIG

    text = AGENTD_CONFIG.format(workers=1, redis="", backend_type="echo", urls="[]")
    config = from_dict(tomllib.loads(text.replace('level = "info"', 'level = "warning"')))
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    assert runner.server is not None
    factory = front_for(app, runner.server) or runner.server
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    heap.settle()  # as a worker does before it serves
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.ws_turn_cost", "--client", str(port),
        "--connections", str(connections), "--turns", str(turns),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )  # fmt: skip
    assert client.stdin is not None and client.stdout is not None
    line = await client.stdout.readline()
    if line.strip() != b"start":
        raise SystemExit(f"the client failed before the measured turns: {line!r}")
    started = time.process_time()
    os.getppid()  # callgrind: --zero-before=getppid
    client.stdin.write(b"go\n")
    line = await client.stdout.readline()
    os.getpgid(0)  # callgrind: --dump-before=getpgid
    cpu = time.process_time() - started
    client.stdin.write(b"bye\n")
    code = await client.wait()
    if not line.startswith(b"end ") or code != 0:
        raise SystemExit(f"the client failed during the measured turns: {line!r}, exit {code}")
    frames = int(line.split()[1])
    server.close()
    await runner.cleanup()
    return {
        "agentd": str(Path(sys.modules["agentd"].__file__ or "").parent),
        "turns": turns,
        "connections": connections,
        "frames_per_turn": round(frames / turns, 3),
        "cpu_us_per_turn": round(cpu / turns * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_turn_cost", description=__doc__)
    parser.add_argument("--turns", type=int, default=6400)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--agentd-root", type=Path, help="measure another checkout's agentd")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.client is not None:
        uvloop.run(_client(args.client, args.connections, args.turns))
        return
    if args.agentd_root is not None:
        sys.path.insert(0, str(args.agentd_root.resolve()))
    result = uvloop.run(_serve(args.turns, args.connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
