"""What the chat, turn and WebSocket tests share: the echo backend's config, request
helpers, and a way to see that a turn is calling the model (the app itself is the
``serve`` fixture in conftest)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from .waiting import wait_until

Factory = Callable[..., Any]


def echo(**backend: Any) -> dict[str, Any]:
    return {"backends": [{"name": "echo", "type": "echo", **backend}]}


async def post(http: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, Any, Any]:
    async with http.post(url, json=body, **kw) as r:
        return r.status, r.headers, orjson.loads(await r.read())


def chat_body(content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": content}], **extra}


# The echo backend's interactive calls in flight, as /metrics reads them at each scrape.
AT_THE_MODEL = 'agentd_upstream_inflight{backend="echo",kind="interactive",node="echo"} '


async def at_the_model(http: aiohttp.ClientSession, url: str) -> int:
    """How many turns are calling the model now: such a turn holds its place in the
    worker and its session's lease."""
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(AT_THE_MODEL):
            return int(float(line[len(AT_THE_MODEL) :]))
    return 0


async def turn_running(http: aiohttp.ClientSession, url: str) -> None:
    """Wait until a turn of the app at ``url`` is calling the model."""
    await wait_until(lambda: at_the_model(http, url), what="the first turn to call the model")


async def sse(resp: aiohttp.ClientResponse) -> list[Any]:
    events = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else orjson.loads(data))
    return events
