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
import time
from random import getrandbits
from typing import Any

import orjson
from aiohttp import web

from ..agent import Agents, Listener, TurnRequest, TurnResult
from ..errors import AgentdError
from ..fastpath import parse_chat
from .http import json_response, start_sse
from .keys import AGENTS, CONFIG

__all__ = ("setup",)


def _completion_id() -> str:
    # A label, not a secret: the random module (reseeded in every forked worker) gives
    # the same 24 hex digits as secrets.token_hex(12) at half the cost.
    return f"chatcmpl-{getrandbits(96):024x}"


def _headers(
    turn: TurnRequest, cache: str, done: TurnResult | None, parse_s: float
) -> dict[str, str]:
    headers = {"X-Cache": cache}
    session_id = turn.session_id
    if session_id is not None:
        headers["X-Session-Id"] = session_id
    if done is not None:
        headers["Server-Timing"] = done.timings.header(parse_s)
    return headers


def _usage(done: TurnResult) -> dict[str, Any]:
    usage = dict(done.usage)
    usage.setdefault("prompt_tokens", 0)
    usage.setdefault("completion_tokens", 0)
    usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
    return usage


async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    # Parsing and validation run in the compiled fast path (agentd/_fastpath.pyx).
    body = parse_chat(await request.read(), request.headers.get("X-Session-Id"))
    turn = TurnRequest(body.model, body.messages, body.session_id, body.params)
    parse_s = time.perf_counter() - started
    deadline = asyncio.get_running_loop().time() + request.app[CONFIG].server.turn_timeout
    agents = request.app[AGENTS]
    if body.stream:
        return await _ChunkStream(request, turn, body.include_usage, parse_s).run(agents, deadline)
    done = await agents.run(turn, deadline=deadline)
    reply = {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": turn.agent,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": done.text},
                "finish_reason": done.finish_reason,
            }
        ],
        "usage": _usage(done),
    }
    if done.seq is not None:
        reply["session_id"] = turn.session_id
        reply["seq"] = done.seq
    return json_response(reply, headers=_headers(turn, done.cache, done, parse_s))


class _ChunkStream(Listener):
    """A streamed turn as SSE in OpenAI's chunk format. Nothing is sent before the first
    delta, so a turn that fails before it starts (unknown session, busy, upstream down)
    is a JSON error."""

    __slots__ = ("cache", "cid", "created", "include_usage", "parse_s", "request", "response",
                 "turn")  # fmt: skip

    def __init__(
        self, request: web.Request, turn: TurnRequest, include_usage: bool, parse_s: float
    ) -> None:
        self.request, self.turn = request, turn
        self.include_usage, self.parse_s = include_usage, parse_s
        self.cid, self.created = _completion_id(), int(time.time())
        self.cache = "bypass"
        self.response: web.StreamResponse | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        doc = {
            "id": self.cid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.turn.agent,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    async def _begin(self) -> web.StreamResponse:
        if self.response is None:
            headers = _headers(self.turn, self.cache, None, self.parse_s)
            self.response = await start_sse(self.request, headers)
            await self.response.write(self._chunk({"role": "assistant", "content": ""}))
        return self.response

    def source(self, cache: str) -> None:
        self.cache = cache

    async def delta(self, text: str) -> None:
        await (await self._begin()).write(self._chunk({"content": text}))

    async def run(self, agents: Agents, deadline: float) -> web.StreamResponse:
        turn = self.turn
        try:
            done = await agents.run(turn, deadline=deadline, listener=self)
        except AgentdError as exc:
            if self.response is None:
                raise
            # Headers are gone: report in the stream, as OpenAI does, then end it.
            await self.response.write(b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n")
        else:
            response = await self._begin()
            extra = {"session_id": turn.session_id, "seq": done.seq} if done.stored else {}
            await response.write(self._chunk({}, done.finish_reason, **extra))
            if self.include_usage:
                doc = {"id": self.cid, "object": "chat.completion.chunk", "created": self.created,
                       "model": turn.agent, "choices": [], "usage": _usage(done)}  # fmt: skip
                await response.write(b"data: " + orjson.dumps(doc) + b"\n\n")
        response = await self._begin()
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def list_models(request: web.Request) -> web.Response:
    agents = request.app[AGENTS].all()
    data = [{"id": a.name, "object": "model", "created": 0, "owned_by": "agentd"} for a in agents]
    return json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    agent = request.app[AGENTS].get(request.match_info["name"])
    return json_response({"id": agent.name, "object": "model", "created": 0, "owned_by": "agentd"})


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{name}", get_model)
