"""The work of a worker for ``added-latency``'s streamed chat completion, in process, so
that ``valgrind --tool=callgrind`` counts the instructions agentd spends on it.

    .venv/bin/python -m bench.front_stream [--requests 2000] [--agentd-root PATH]

    valgrind --tool=callgrind --zero-before=getppid --dump-before=getpgid \\
        .venv/bin/python -m bench.front_stream --requests 2000

Starts the scenario's upstream stub (``bench/baselines/upstream.py``, a subprocess on
loopback, not under valgrind) and, in this process, the application of one worker with
``added-latency``'s config (an ``openai`` backend at the stub), then feeds one
connection of its front (:class:`agentd.server.front.FrontConnection`, on a transport
that keeps what is written) the request the scenario sends, ``--requests`` times, each
once the previous answer has ended, as the scenario's client at concurrency 1 does. The
model call is real: agentd's HTTP/1.1 client, a kept-alive connection to the stub.

The measured requests run between a call of ``os.getppid()`` and one of
``os.getpgid(0)`` (libc's ``getppid`` and ``getpgid``, which nothing else here calls),
so callgrind's ``--zero-before=getppid --dump-before=getpgid`` writes their cost alone
to the first dump (``callgrind.out.<pid>.1``); divide its total by ``--requests``. It
includes the event loop's waits for the stub (``epoll_wait`` costs few instructions in
user space) but not the stub's work. The output also says the answer's writes to the
client per request, and how many answers took more writes than the stub's reply took
reads (counted by wrapping the upstream connection's ``data_received``: one more Python
call per read, in the counts too).
Without valgrind it prints the CPU seconds per request too (noisy, unlike the counts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop

from .front_hit import Transport as KeptTransport
from .front_hit import chat_post, connect, measured

# Requests before the measured ones: the connection to the stub open and warm.
WARM = 200
_LAST_CHUNK = b"0\r\n\r\n"


class Transport(KeptTransport):
    """What the front writes to, kept (the writes of the last answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: list[bytes] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.answer.append(data)


def _count_upstream_reads() -> list[int]:
    """A counter of the reads agentd's upstream connections make (how the stub's reply
    came), kept by wrapping their ``data_received``: one more call per read."""
    from agentd.backends.http1_connection import Connection

    count = [0]
    received = Connection.data_received

    def counted(self: Connection, data: bytes) -> None:
        count[0] += 1
        received(self, data)

    Connection.data_received = counted  # type: ignore[method-assign]
    return count


async def serve(requests: int, upstream_url: str) -> dict[str, Any]:
    from aiohttp import web

    from agentd.config import from_dict
    from agentd.server.app import create_app
    from agentd.server.front import front_for

    from .scenarios.common import STREAM_CHAT
    from .targets import AGENTD_CONFIG

    text = AGENTD_CONFIG.format(
        workers=1, redis="", backend_type="openai", urls=f'["{upstream_url}"]'
    )
    reads = _count_upstream_reads()
    app = create_app(from_dict(tomllib.loads(text)))
    runner = web.AppRunner(app)
    await runner.setup()
    request = chat_post(STREAM_CHAT)
    front = front_for(app, runner.server)  # type: ignore[arg-type]
    assert front is None or front.streams is not None, "this agentd's front streams nothing"
    transport = Transport()
    conn = connect(front, transport)
    incomplete = [0]
    answered_in: Counter[int] = Counter()  # writes an answer took -> answers
    over_reads = [0]  # answers written in more writes than the stub's reply took reads

    async def run(n: int) -> None:
        for _ in range(n):
            transport.answer = []
            before = reads[0]
            conn.data_received(request)
            busy = conn.busy
            if busy is not None:
                await busy  # (after the front's own callback, which writes the answer)
            if not transport.answer or not transport.answer[-1].endswith(_LAST_CHUNK):
                incomplete[0] += 1
            answered_in[len(transport.answer)] += 1
            over_reads[0] += len(transport.answer) > reads[0] - before

    try:
        await run(WARM)
        writes = transport.writes
        incomplete[0] = 0
        answered_in.clear()
        over_reads[0] = 0
        cpu = await measured(run, requests)
    finally:
        conn.connection_lost(None)
        await runner.cleanup()
    answer = b"".join(transport.answer)
    return {
        "agentd": str(Path(sys.modules["agentd"].__file__ or "").parent),
        "requests": requests,
        "incomplete": incomplete[0],
        "client_writes_per_request": round((transport.writes - writes) / requests, 3),
        # How many answers took 1, 2, ... writes (the stub's reply split into more reads
        # takes more).
        "answers_by_writes": {str(k): answered_in[k] for k in sorted(answered_in)},
        # A pass's frames go out in one write: never more writes than the reply's reads.
        "answers_in_more_writes_than_reads": over_reads[0],
        "cpu_us_per_request": round(cpu / requests * 1e6, 2),
        "last_head": answer.split(b"\r\n\r\n", 1)[0].decode().split("\r\n"),
        "last_bytes": len(answer),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.front_stream", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--agentd-root", type=Path, help="measure another checkout's agentd")
    args = parser.parse_args()
    if args.agentd_root is not None:
        sys.path.insert(0, str(args.agentd_root.resolve()))
    from . import targets  # imports agentd: after the checkout under test is first

    # As in the scenario: the worker on one CPU, the stub on the others (a stub on the
    # worker's CPU would run inside the worker's writes to it).
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, cpus[:1])
    with (
        tempfile.TemporaryDirectory(prefix="agentd-front-stream-") as workdir,
        targets.upstream(Path(workdir), cpus[1:]) as upstream,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,  # as a worker's
    ):
        result = runner.run(serve(args.requests, upstream.url("/v1")))
    print(json.dumps(result))
    if result["incomplete"]:
        sys.exit(f"not every answer ended: {result}")


if __name__ == "__main__":
    main()
