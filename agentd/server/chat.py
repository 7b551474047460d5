"""The OpenAI-compatible chat API: ``POST /v1/chat/completions`` and ``GET /v1/models``.

``model`` names an agent. A session is chosen with ``session_id`` in the body (an
extension field; the OpenAI SDKs send it through ``extra_body``) or the
``X-Session-Id`` header: the agent then prepends the session's last ``history``
messages, and the request's messages (all but system messages) and the reply are
appended to the session. Without a session the turn is stateless. With a session, send
only the new messages of the turn, not the whole conversation.

Function tools are passed through: the request's ``tools`` go to the model, its
``tool_calls`` come back (``finish_reason: "tool_calls"``), and the client's next
request answers them with ``tool`` messages; with a session all of it is stored. An
agent's own tools (MCP) run server-side in its loop (:mod:`agentd.agent.loop`); a
streamed reply shows each of their calls as an extra chunk (docs/protocol.md).

Every response carries ``X-Session-Id`` (when there is one) and ``Server-Timing``
(parse, session, upstream time to first token, upstream total, persist).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..agent import Agents, Listener, TurnRequest, TurnResult
from ..auth import Identity
from ..config import AgentConfig, Config
from ..errors import AgentdError
from ..fastpath import ChatBody, parse_chat
from ..schema import check_tool_params, validate_session_id
from ..tools import ToolResult
from ..wire.chat import DONE, Chunks, completion, completion_id, error_frame, model_object
from ..wire.tool_progress import call_ended, call_started
from .auth import identity_of
from .http import json_response, start_sse
from .keys import AGENTS, CONFIG

__all__ = ("chat_completion", "chat_reply", "chat_turn", "setup")


def _headers(
    turn: TurnRequest,
    cache: str,
    done: TurnResult | None,
    parse_s: float,
    ratelimit: Mapping[str, str] | None = None,
) -> dict[str, str]:
    headers = {"X-Cache": cache}
    if ratelimit:
        headers.update(ratelimit)
    session_id = turn.session_id
    if session_id is not None:
        headers["X-Session-Id"] = session_id
    if done is not None:
        headers["Server-Timing"] = done.timings.header(parse_s)
        headers.update(done.ratelimit)
    return headers


def chat_turn(body: ChatBody, identity: Identity, agents: Agents) -> TurnRequest:
    """The turn a parsed chat request asks for, checked against the caller's identity
    (the front answers with it too, server/front_chat.py)."""
    identity.check_agent(body.model)
    params = body.params
    if params and ("tools" in params or "tool_choice" in params or "parallel_tool_calls" in params):
        check_tool_params(params, agents.get(body.model).params.get("tools"))
    if body.session_id is not None:
        agents.get(body.model)  # an unknown model first, as for a missing session
        identity.check_session(validate_session_id(body.session_id))
    return TurnRequest(
        body.model,
        body.messages,
        body.session_id,
        body.params,
        store=body.store,
        metadata=body.metadata,
        tenant=identity.tenant,
        identity=identity,
        tool_calls=True,
    )


def chat_reply(
    turn: TurnRequest, done: TurnResult, parse_s: float
) -> tuple[dict[str, Any], dict[str, str]]:
    """A finished turn's ``chat.completion`` object and the headers it goes with."""
    return chat_completion(turn, done), _headers(turn, done.cache, done, parse_s)


def chat_completion(turn: TurnRequest, done: TurnResult) -> dict[str, Any]:
    """A finished turn's ``chat.completion`` object."""
    return completion(
        completion_id(),
        int(time.time()),
        turn.agent,
        done.text,
        done.finish_reason,
        done.usage,
        turn.session_id,
        done.seq,
        done.tool_calls,
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    # Parsing and validation run in the compiled fast path (agentd/_fastpath.pyx).
    body = parse_chat(await request.read(), request.headers.get("X-Session-Id"))
    agents = request.app[AGENTS]
    turn = chat_turn(body, identity_of(request), agents)
    parse_s = time.perf_counter() - started
    deadline = asyncio.get_running_loop().time() + request.app[CONFIG].server.turn_timeout
    if body.stream:
        return await _ChunkStream(request, turn, body.include_usage, parse_s).run(agents, deadline)
    done = await agents.run(turn, deadline=deadline)
    reply, headers = chat_reply(turn, done, parse_s)
    return json_response(reply, headers=headers)


class _ChunkStream(Listener):
    """A streamed turn as SSE in OpenAI's chunk format. Nothing is sent before the first
    delta, so a turn that fails before it starts (unknown session, busy, upstream down)
    is a JSON error."""

    __slots__ = (
        "cache", "chunks", "include_usage", "parse_s", "ratelimit", "request", "response", "turn",
    )  # fmt: skip

    def __init__(
        self, request: web.Request, turn: TurnRequest, include_usage: bool, parse_s: float
    ) -> None:
        self.request, self.turn = request, turn
        self.include_usage, self.parse_s = include_usage, parse_s
        self.chunks = Chunks(completion_id(), int(time.time()), turn.agent)
        self.cache = "bypass"
        self.ratelimit: Mapping[str, str] = {}
        self.response: web.StreamResponse | None = None

    async def _begin(self, content: str | None = "") -> web.StreamResponse:
        if self.response is None:
            headers = _headers(self.turn, self.cache, None, self.parse_s, self.ratelimit)
            self.response = await start_sse(self.request, headers)
            await self.response.write(self.chunks.role(content))
        return self.response

    def source(self, cache: str) -> None:
        self.cache = cache

    def limits(self, headers: Mapping[str, str]) -> None:
        self.ratelimit = headers

    async def delta(self, text: str) -> None:
        await (await self._begin()).write(self.chunks.content(text))

    async def tool_deltas(self, pieces: list[dict[str, Any]]) -> None:
        await (await self._begin(None)).write(self.chunks.tool_calls(pieces))

    async def tool_call(self, call: Mapping[str, Any], server: str) -> None:
        await (await self._begin()).write(self.chunks.progress(call_started(call, server)))

    async def tool_result(self, call: Mapping[str, Any], result: ToolResult) -> None:
        doc = call_ended(call, result.outcome, result.is_error, result.text)
        await (await self._begin()).write(self.chunks.progress(doc))

    async def run(self, agents: Agents, deadline: float) -> web.StreamResponse:
        try:
            done = await agents.run(self.turn, deadline=deadline, listener=self)
        except AgentdError as exc:
            if self.response is None:
                raise
            # Headers are gone: report in the stream, as OpenAI does, then end it.
            await self.response.write(error_frame(exc))
        else:
            response = await self._begin()
            await response.write(
                self.chunks.finish(done.finish_reason, self.turn.session_id, done.seq)
            )
            if self.include_usage:
                await response.write(self.chunks.usage(done.usage))
        response = await self._begin()
        await response.write(DONE)
        await response.write_eof()
        return response


def _model(config: Config, agent: AgentConfig) -> dict[str, Any]:
    # An agent is as old as its own `created`, else as the config that defines it: the
    # file's modification time, the same on every worker (and every instance that
    # deploys the same file), and changed only when the file is.
    return model_object(agent.name, agent.created or config.written_at)


async def list_models(request: web.Request) -> web.Response:
    """The agents the caller may use."""
    config, allowed = request.app[CONFIG], identity_of(request).agents
    agents = [a for a in request.app[AGENTS].all() if allowed is None or a.name in allowed]
    return json_response({"object": "list", "data": [_model(config, a) for a in agents]})


async def get_model(request: web.Request) -> web.Response:
    agent = request.app[AGENTS].get(request.match_info["name"])
    identity_of(request).check_agent(agent.name)
    return json_response(_model(request.app[CONFIG], agent))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{name}", get_model)
