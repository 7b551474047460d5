"""The front's chat completion: ``POST /v1/chat/completions`` answered without aiohttp's
request and response objects, by the same steps as the route (:mod:`.chat`): the body
parsed by the fast path, the caller identified and checked as :func:`.auth.authenticate`
does, the turn run by :meth:`Agents.run` (an L1 cache hit returns without suspending),
the same ``chat.completion`` body and headers, counted in the same request metrics.

The turn of a body seen lately is not built again: the same bytes from the same caller
make the same turn and the same model call, so the turn and its plan
(:meth:`Agents.prepare`, which includes the cache key) are kept by the body's bytes,
with the caller's identity, for the next identical request, up to :data:`MEMO_ENTRIES`
bodies of at most :data:`MEMO_BODY_BYTES` each. The caller is the same when this
worker's key cache answers the request's credential with the very identity object kept
(:meth:`Auth.known`, which checks the secret and the expiry on every request): an
identity is immutable, and a key changed or revoked gets a new one (or none), so what
was checked when the turn was built (the ``chat`` scope, the agent) still holds. An L1
hit then costs the identity look-up, the cache look-up, the admission and limits, the
metrics and the answer's bytes.

What the route would refuse before the turn starts (a body that does not parse, a bad
credential, a missing scope, an unknown agent) and what the front does not do (a
session, tools) goes to aiohttp, which answers it as without a front. A stream is
:mod:`.front_stream`'s (the front gives it every body with ``"stream"`` in it, and it
passes those that are no stream on to :meth:`HotChat.begin`). Once the turn has
started, its error is answered here, rendered as :func:`.http.error_response` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Coroutine
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from ..agent import Agents, Prepared, TurnRequest
from ..aio import in_task
from ..auth import OPEN, Auth, Identity, Rendered, header_lines
from ..errors import AgentdError, Internal
from ..fastpath import parse_chat
from .chat import chat_completion, chat_turn
from .keys import AGENTS, AUTH, CONFIG

__all__ = ("HotChat",)

log = logging.getLogger(__name__)

ROUTE = "/v1/chat/completions"
# What the front answers with (its headers, or their lines), and None: "give the
# request to aiohttp".
Answer = tuple[int, Collection[tuple[str, str]] | bytes, bytes] | None
_TOOL_PARAMS = frozenset(("tools", "tool_choice", "parallel_tool_calls"))
# The bodies whose turns are kept (the oldest goes first), and the longest kept: a few
# MiB at most, parsed messages included.
MEMO_ENTRIES = 64
MEMO_BODY_BYTES = 8192


class HotChat:
    """A worker's chat completions, as the front answers them."""

    def __init__(self, app: web.Application) -> None:
        self.agents: Agents = app[AGENTS]
        self.auth: Auth = app[AUTH]
        config = app[CONFIG]
        self.turn_timeout = config.server.turn_timeout
        self.max_body = config.server.max_request_bytes
        # Body bytes -> the caller, the turn they ask for and its plan.
        self.memo: dict[bytes, tuple[Identity, TurnRequest, Prepared]] = {}
        # The last Authorization header's bytes, and the credential in them.
        self.authorization: bytes | None = None
        self.credential: str | None = None
        # The worker's event loop, once known (each look-up of the running loop is a
        # getpid system call in Python 3.11).
        self.loop: asyncio.AbstractEventLoop | None = None

    def begin(self, raw: bytes, authorization: bytes | None) -> Coroutine[Any, Any, Answer] | None:
        """The answer's coroutine for the body ``raw``, or None (aiohttp's request)."""
        started = time.perf_counter()
        kept = self.memo.get(raw)
        if kept is not None:
            auth = self.auth
            identity = OPEN
            if auth.enabled:
                if authorization is not self.authorization:
                    # The front hands over the very bytes of a header block it read before
                    # (its memo of header blocks): their credential is found once.
                    self.authorization = authorization
                    self.credential = _credential(authorization)
                identity = auth.known(self.credential)
            if kept[0] is identity:
                return self._run(kept[1], kept[2], started)
        try:
            body = parse_chat(raw, None)
        except Exception:
            return None  # aiohttp says the same
        if body.stream or body.session_id is not None:
            return None
        params = body.params
        if params and not _TOOL_PARAMS.isdisjoint(params):
            return None
        return self._answer(raw, body, _credential(authorization), started)

    async def turn_of(
        self, body: Any, credential: str | None
    ) -> tuple[Identity, TurnRequest] | None:
        """The caller and the turn ``body`` asks for, or None when the route would refuse
        it before the turn (aiohttp then refuses it the same way)."""
        try:
            identity = OPEN
            if self.auth.enabled:
                # A key this worker knows costs no coroutine.
                identity = self.auth.known(credential) or await self._identify(credential)
                identity.require("chat")
            return identity, chat_turn(body, identity, self.agents)
        except AgentdError:
            return None

    async def _answer(
        self, raw: bytes, body: Any, credential: str | None, started: float
    ) -> Answer:
        found = await self.turn_of(body, credential)
        if found is None:
            return None
        identity, turn = found
        prepared = None
        # A connection token's identity is made anew for each request: never found again.
        if len(raw) <= MEMO_BODY_BYTES and identity.kind != "token":
            prepared = self.agents.prepare(turn)
            if prepared is not None:
                memo = self.memo
                if raw not in memo and len(memo) >= MEMO_ENTRIES:
                    del memo[next(iter(memo))]
                memo[raw] = (identity, turn, prepared)
        return await self._run(turn, prepared, started)

    async def _identify(self, credential: str | None) -> Identity:
        await in_task()  # a key not known here is read from the store, which needs one
        return await self.auth.identify(credential)

    async def _run(self, turn: TurnRequest, prepared: Prepared | None, started: float) -> Answer:
        parse_s = time.perf_counter() - started
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        deadline = loop.time() + self.turn_timeout
        try:
            done = await self.agents.run(turn, deadline=deadline, prepared=prepared)
            reply = chat_completion(turn, done)
            # chat_reply's headers, of a turn without a session, and the limits' below.
            timing = done.timings.header(parse_s)
        except AgentdError as exc:
            return error_answer(exc)
        except Exception:
            log.exception("unhandled error on POST %s", ROUTE)
            return error_answer(Internal("internal server error"))
        lines = f"X-Cache: {done.cache}\r\nServer-Timing: {timing}\r\n".encode()
        limits = done.ratelimit
        if type(limits) is Rendered:  # the lines the limiter keeps
            lines += limits.lines()
        elif limits:
            lines += header_lines(limits)
        return 200, lines, orjson.dumps(reply)


def error_answer(exc: AgentdError) -> Answer:
    """An error as :func:`.http.error_response` answers it."""
    headers = []
    if exc.retry_after is not None:
        headers.append(("Retry-After", str(max(1, round(exc.retry_after)))))
    return exc.status, headers, orjson.dumps(exc.to_dict())


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>`` with aiohttp's reason phrases."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return f"HTTP/1.1 {status} {reason}".encode()


def _credential(authorization: bytes | None) -> str | None:
    """What :func:`.auth.credential_of` finds in an ``Authorization`` header."""
    if authorization is None:
        return None
    if authorization.startswith(b"Bearer "):  # as nearly every client writes it
        value = authorization[7:].decode("latin-1").strip()
        return value or None
    scheme, _, value = authorization.decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
