"""The OpenAI-compatible chat API: ``POST /v1/chat/completions`` and ``GET /v1/models``.

``model`` names an agent. A session is chosen with ``session_id`` in the body (an
extension field; the OpenAI SDKs send it through ``extra_body``) or the
``X-Session-Id`` header: the agent then prepends the session's last ``history``
messages, and the request's messages (all but system messages) and the reply are
appended to the session. Without a session the turn is stateless. With a session, send
only the new messages of the turn, not the whole conversation.

Every response carries ``X-Session-Id`` (when there is one) and ``Server-Timing``
(parse, session, upstream time to first token, upstream total, persist).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web

from ..agent import TurnDone, TurnRequest
from ..errors import AgentdError
from ..fastpath import parse_chat
from ..wire.chat import DONE, Chunks, completion, completion_id, error_frame, model_object
from .http import json_response, start_sse
from .keys import AGENTS, CONFIG

__all__ = ("setup",)


def _headers(turn: TurnRequest, done: TurnDone | None, parse_s: float) -> dict[str, str]:
    headers = {"X-Cache": turn.cache}
    session_id = turn.session_id
    if session_id is not None:
        headers["X-Session-Id"] = session_id
    if done is not None:
        headers["Server-Timing"] = done.timings.header(parse_s)
    return headers


async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    # Parsing and validation run in the compiled fast path (agentd/_fastpath.pyx).
    body = parse_chat(await request.read(), request.headers.get("X-Session-Id"))
    turn = TurnRequest(body.model, body.messages, body.session_id, body.params)
    stream, include_usage = body.stream, body.include_usage
    parse_s = time.perf_counter() - started
    agents = request.app[AGENTS]
    agents.get(turn.agent)  # an unknown model is a 404 before anything runs
    deadline = asyncio.get_running_loop().time() + request.app[CONFIG].server.turn_timeout
    if stream:
        events = agents.run(turn, deadline=deadline)
        return await _stream(request, events, turn, include_usage, parse_s)
    done = await agents.complete(turn, deadline=deadline)
    body = completion(
        completion_id(),
        int(time.time()),
        turn.agent,
        done.text,
        done.finish_reason,
        done.usage,
        turn.session_id,
        done.seq,
    )
    return json_response(body, headers=_headers(turn, done, parse_s))


async def _stream(
    request: web.Request, events: Any, turn: TurnRequest, include_usage: bool, parse_s: float
) -> web.StreamResponse:
    """SSE in OpenAI's chunk format. Nothing is sent before the first event, so a turn
    that fails before it starts (unknown session, busy, upstream down) is a JSON error."""
    async with contextlib.aclosing(events):
        return await _write_stream(request, events, turn, include_usage, parse_s)


async def _write_stream(
    request: web.Request, iterator: Any, turn: TurnRequest, include_usage: bool, parse_s: float
) -> web.StreamResponse:
    chunks = Chunks(completion_id(), int(time.time()), turn.agent)
    first = await anext(iterator)
    response = await start_sse(request, _headers(turn, None, parse_s))
    await response.write(chunks.role())
    item = first
    try:
        while True:
            if isinstance(item, TurnDone):
                await response.write(chunks.finish(item.finish_reason, turn.session_id, item.seq))
                if include_usage:
                    await response.write(chunks.usage(item.usage))
                break
            await response.write(chunks.content(item))
            item = await anext(iterator)
    except AgentdError as exc:
        # Headers are gone: report in the stream, as OpenAI does, then end it.
        await response.write(error_frame(exc))
    await response.write(DONE)
    await response.write_eof()
    return response


async def list_models(request: web.Request) -> web.Response:
    agents = request.app[AGENTS].all()
    return json_response({"object": "list", "data": [model_object(a.name) for a in agents]})


async def get_model(request: web.Request) -> web.Response:
    agent = request.app[AGENTS].get(request.match_info["name"])
    return json_response(model_object(agent.name))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{name}", get_model)
