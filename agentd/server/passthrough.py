"""The pass-through endpoints: ``POST /v1/embeddings`` and ``POST /v1/completions``
(legacy), forwarded to the agent's backend.

``model`` names an agent, as in the chat APIs: the agent gives the backend and the model
name sent upstream (its ``model``, or its name); its system prompt, history and
``params`` are chat settings and do not apply. Nothing is stored or cached. A call is
an interactive turn for admission (``server.max_inflight_turns`` and the partition's
cap, 503 ``overloaded``), takes ``server.turn_timeout`` at most, and goes through the
backend's pool: its balancer, breakers, ``max_inflight`` and metrics. It is retried on
another node while nothing has reached the client: an embeddings call or an unstreamed
completion on any retryable failure, a streamed completion before its first chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from ..agent import Agents
from ..auth import Ticket
from ..backends import EmbeddingRequest, TextChoice, TextChunk, TextRequest
from ..config import AgentConfig
from ..errors import AgentdError
from ..wire.chat import DONE, error_frame
from ..wire.embeddings import embeddings_object
from ..wire.passthrough import TextBody, parse_completions, parse_embeddings
from ..wire.text_completions import TextChunks, completion_id, text_completion
from .auth import identity_of
from .http import json_response, start_sse
from .keys import AGENTS, BACKENDS, CONFIG

__all__ = ("setup",)


@contextlib.asynccontextmanager
async def _admitted(
    request: web.Request, agents: Agents, agent: AgentConfig
) -> AsyncIterator[Ticket | None]:
    """Count the call as an interactive turn of ``agent`` (503 over the caps) and as a
    request of its caller (429 over their limits); the ticket is settled on every path
    (with the call's usage by whoever has it first)."""
    agents.admission.check(agent.name)
    agents.admission.enter(agent.name)
    limiter = agents.limiter
    ticket = None if limiter is None else limiter.begin(identity_of(request))
    try:
        if ticket is not None:
            await ticket.admitted()
        yield ticket
    finally:
        if ticket is not None:
            ticket.settle(ran=False)
        agents.admission.leave(agent.name)


def _deadline(request: web.Request) -> float:
    return asyncio.get_running_loop().time() + request.app[CONFIG].server.turn_timeout


async def embeddings(request: web.Request) -> web.Response:
    body = parse_embeddings(await request.read())
    identity_of(request).check_agent(body.agent)
    agents = request.app[AGENTS]
    agent = agents.get(body.agent)
    pool = request.app[BACKENDS].get(agent.backend)
    call = EmbeddingRequest(agent.upstream_model, body.input, body.params)
    async with _admitted(request, agents, agent) as ticket:
        reply = await pool.embed(call, _deadline(request))
        headers = _settled(ticket, reply.usage)
    return json_response(
        embeddings_object(agent.name, reply.vectors, reply.usage, body.encoding), headers=headers
    )


async def completions(request: web.Request) -> web.StreamResponse:
    body = parse_completions(await request.read())
    identity_of(request).check_agent(body.agent)
    agents = request.app[AGENTS]
    agent = agents.get(body.agent)
    pool = request.app[BACKENDS].get(agent.backend)
    call = TextRequest(agent.upstream_model, body.prompt, body.params, body.stream)
    cid, created = completion_id(), int(time.time())
    async with _admitted(request, agents, agent) as ticket:
        chunks = pool.complete_text(call, _deadline(request))
        async with contextlib.aclosing(chunks):
            if body.stream:
                frames = TextChunks(cid, created, agent.name)
                return await _stream(request, body, chunks, frames, ticket)
            choices: dict[int, TextChoice] = {}
            usage: dict[str, int] = {}
            async for chunk in chunks:
                for piece in chunk.choices:
                    _merge(choices, piece)
                usage = chunk.usage or usage
        headers = _settled(ticket, usage)
    for choice in choices.values():
        choice.finish_reason = choice.finish_reason or "stop"
    reply = text_completion(cid, created, agent.name, choices.values(), usage)
    return json_response(reply, headers=headers)


def _settled(ticket: Ticket | None, usage: Mapping[str, Any] | None) -> dict[str, str]:
    """Charge the call's usage (tokens it does not report are not charged); the
    caller's x-ratelimit-* headers."""
    if ticket is None:
        return {}
    ticket.settle(usage, "miss")
    return dict(ticket.headers)


def _merge(choices: dict[int, TextChoice], piece: TextChoice) -> None:
    """Add a piece to its choice (the whole choice, when the reply came unstreamed)."""
    choice = choices.get(piece.index)
    if choice is None:
        choices[piece.index] = TextChoice(piece.index, piece.text, piece.finish_reason, None)
        choice = choices[piece.index]
    else:
        choice.text += piece.text
        choice.finish_reason = piece.finish_reason or choice.finish_reason
    if piece.logprobs is not None:
        choice.logprobs = _join_logprobs(choice.logprobs, piece.logprobs)


def _join_logprobs(before: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    """Streamed logprobs come per piece: their lists concatenate."""
    if before is None:
        return dict(more)
    joined = dict(before)
    for key, value in more.items():
        if isinstance(value, list) and isinstance(joined.get(key), list):
            joined[key] = joined[key] + value
        else:
            joined[key] = value
    return joined


async def _stream(
    request: web.Request,
    body: TextBody,
    chunks: AsyncIterator[TextChunk],
    frames: TextChunks,
    ticket: Ticket | None,
) -> web.StreamResponse:
    """Relay the chunks as SSE. Nothing is sent before the first chunk, so a call that
    fails before it (no healthy node, a refused request) is a JSON error."""
    response: web.StreamResponse | None = None
    usage: dict[str, int] = {}
    try:
        async for chunk in chunks:
            if response is None:
                response = await start_sse(request, dict(ticket.headers) if ticket else None)
            if chunk.choices:
                await response.write(frames.choices(chunk.choices))
            usage = chunk.usage or usage
    except AgentdError as exc:
        if response is None:
            raise
        await response.write(error_frame(exc))  # headers are gone: report in the stream
    else:
        _settled(ticket, usage)
        if response is None:
            response = await start_sse(request, dict(ticket.headers) if ticket else None)
        if body.include_usage:
            await response.write(frames.usage(usage))
    await response.write(DONE)
    await response.write_eof()
    return response


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/completions", completions)
