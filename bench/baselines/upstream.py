"""An OpenAI-compatible model stub for the added-latency measurement.

``POST /v1/chat/completions`` answers at once with a fixed reply, streamed as agentd's
``openai`` backend asks (``stream: true``, with a usage chunk), or as one JSON body.
The harness times it called directly and called through agentd: the difference is
what agentd adds to a turn. ``GET /stats`` says how many completions it has answered (a
peer's cache hit never reaches it).

    python -m bench.baselines.upstream --port PORT
"""

from __future__ import annotations

import argparse

import orjson
import uvloop
from aiohttp import web

from .aiohttp_app import COMPLETION, OK, STREAM

USAGE = (
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-0123456789abcdef01234567",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "echo",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )
    + b"\n\n"
)
STREAMED = [*STREAM[:-1], USAGE, STREAM[-1]]


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=OK, content_type="application/json")


SERVED = web.AppKey("served", list[int])


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"completions": request.app[SERVED][0]})


async def completions(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    request.app[SERVED][0] += 1
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for part in STREAMED:
        await response.write(part)
    await response.write_eof()
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app[SERVED] = [0]
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_post("/v1/chat/completions", completions)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=2048,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
