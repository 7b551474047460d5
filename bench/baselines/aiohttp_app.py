"""The framework ceiling: bare aiohttp handlers with fixed bodies, one uvloop process.

Same wire shapes as agentd's replies (a chat completion, an SSE stream of the same
number of chunks, WebSocket ``ready``/``delta``/``done`` frames) and no work behind
them, so the gap to agentd is what agentd does beyond the framework.

    python -m bench.baselines.aiohttp_app --port PORT
"""

from __future__ import annotations

import argparse

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
            turn = frame.get("id")
            for word in ("hello ", "there"):
                delta = {"type": "delta", "id": turn, "content": word}
                await ws.send_str(orjson.dumps(delta).decode())
            done = {
                "type": "done",
                "id": turn,
                "seq": 2,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hello there"},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=2048,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
