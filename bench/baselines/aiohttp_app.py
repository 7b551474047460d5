"""The framework ceiling: bare aiohttp handlers with fixed bodies, uvloop processes.

Same wire shapes as agentd's replies (a chat completion, an SSE stream of the same
number of chunks, WebSocket ``ready``, then per message a ``delta`` per word as agentd's
echo agent sends them and a ``done``) and no work behind them, so the gap to agentd is
what agentd does beyond the framework.

    python -m bench.baselines.aiohttp_app --port PORT [--processes N]

With ``--processes N`` (N > 1) the parent binds N ``SO_REUSEPORT`` sockets on the port,
as agentd's supervisor does for its workers, forks N processes that each serve the same
app on one of them (the kernel spreads new connections over the sockets), and only
waits: SIGTERM to it stops them all. One process (the default) is ``web.run_app`` alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import traceback

import orjson
import uvloop
from aiohttp import WSMsgType, web

OK = b'{"status":"ok"}'
COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-0123456789abcdef01234567",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "echo",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello there"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
)


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    doc = {
        "id": "chatcmpl-0123456789abcdef01234567",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "echo",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(doc) + b"\n\n"


STREAM = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "hello "}),
    _chunk({"content": "there"}),
    _chunk({}, "stop"),
    b"data: [DONE]\n\n",
]


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=OK, content_type="application/json")


async def completion(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=COMPLETION, content_type="application/json")


async def stream(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for part in STREAM:
        await response.write(part)
    await response.write_eof()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        frame = orjson.loads(msg.data)
        if frame.get("type") == "hello":
            await ws.send_str('{"type":"ready","session_id":"s","seq":0}')
        elif frame.get("type") == "message":
            # One delta per word of the message, as agentd's echo agent sends them.
            turn = frame.get("id")
            text = str(frame.get("content", ""))
            words = text.split()
            for index, word in enumerate(words):
                piece = word if index == len(words) - 1 else word + " "
                delta = {"type": "delta", "id": turn, "content": piece}
                await ws.send_str(orjson.dumps(delta).decode())
            done = {
                "type": "done",
                "id": turn,
                "seq": 2,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "turn": "t_000000000000",
                    "created_at": 0.0,
                    "seq": 2,
                },
                "usage": {"completion_tokens": len(words)},
                "finish_reason": "stop",
            }
            await ws.send_str(orjson.dumps(done).decode())
    return ws


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/chat/completions", completion)
    app.router.add_post("/stream", stream)
    app.router.add_get("/v1/ws", websocket)
    return app


BACKLOG = 2048


def _listener(port: int) -> socket.socket:
    """One of the ``SO_REUSEPORT`` sockets on ``port``, bound and listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(BACKLOG)
    return sock


def _processes(port: int, count: int) -> int:
    """Fork ``count`` servers, one per ``SO_REUSEPORT`` socket; wait for them; their exit."""
    socks = [_listener(port) for _ in range(count)]
    children: list[int] = []
    for mine in socks:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for other in socks:
                    if other is not mine:
                        other.close()
                web.run_app(
                    make_app(),
                    sock=mine,
                    access_log=None,
                    print=None,
                    loop=uvloop.new_event_loop(),
                )
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        children.append(pid)

    alive = set(children)

    def stop(signum: int, _frame: object) -> None:
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    while alive:
        pid, code = os.wait()
        alive.discard(pid)
        if code and not status:  # one died: stop the others too
            status = os.waitstatus_to_exitcode(code) or 1
            stop(signal.SIGTERM, None)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--processes", type=int, default=1, help="server processes sharing the port (default 1)"
    )
    args = parser.parse_args()
    if args.processes > 1:
        sys.exit(_processes(args.port, args.processes))
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=BACKLOG,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
