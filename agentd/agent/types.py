"""What goes into a turn and what comes out of it."""

from __future__ import annotations

import abc
import binascii
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import copysign
from types import MappingProxyType
from typing import Any

from ..auth import Identity
from ..backends import INTERACTIVE
from ..tools import ToolResult, ToolServer, ToolSet

__all__ = (
    "Checkpoint",
    "Listener",
    "RecordedStep",
    "ReplayTimings",
    "Timings",
    "ToolRun",
    "TurnRequest",
    "TurnResult",
    "new_turn_id",
)


# No headers: one shared empty mapping (a turn without limits allocates none).
NO_HEADERS: Mapping[str, str] = MappingProxyType({})


# base64's alphabet made URL-safe, as secrets.token_urlsafe has it.
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def new_turn_id() -> str:
    """``t_`` and 72 random bits, URL-safe: ``secrets.token_urlsafe(9)`` without its
    three Python calls (one turn each)."""
    token = binascii.b2a_base64(os.urandom(9), newline=False).translate(_URLSAFE)
    return "t_" + token.decode()


@dataclass(slots=True)
class TurnRequest:
    agent: str
    messages: list[dict[str, Any]]
    session_id: str | None = None
    # Client generation parameters; they override the agent's own.
    params: dict[str, Any] = field(default_factory=dict)
    # Stored on the turn's messages, so a connection can tell its own turns' events
    # ("": one is drawn if the turn is stored; stateless turns never pay for one).
    turn_id: str = ""
    # The model call's class (the backend's capacity and policy per class): only
    # interactive turns count toward the worker's and the partition's turn limits.
    request_class: str = INTERACTIVE
    # False: the turn reads its session's history but is not appended to it (chat's
    # ``store``); nothing is stored, so the result has no seq.
    store: bool = True
    # The chat request's ``metadata``, kept on the stored reply.
    metadata: dict[str, str] | None = None
    # True: ``turn_id`` may already be stored by an earlier run of this very request (a
    # job's retried attempt); the turn then tells that reply again instead of running.
    may_repeat: bool = False
    # The caller's tenant: the session is the tenant's, and so is the cached reply
    # unless the agent shares its cache (``shared_cache``).
    tenant: str = ""
    # Who asks: their rate limits and quotas apply, their usage is counted (None: no one's).
    identity: Identity | None = None
    # True: the caller relays the model's tool calls to its client (chat completions).
    # Otherwise a reply with tool calls fails the turn (400 ``tool_calls_unsupported``)
    # and nothing is stored: no client could answer them.
    tool_calls: bool = False
    # Where the agent's tool loop records its steps, and finds those an earlier run of
    # this very turn recorded (a background response's attempts); None: none (interactive
    # turns), a turn killed mid-loop starts over.
    checkpoint: Checkpoint | None = None
    # How deep in agent calls (the built-in call_agent) the turn runs: 0 for a client's
    # turn, 1 for a turn it called. A deeper turn is part of its caller's: admitted with
    # it, so neither the worker's turn cap nor the caller's limits refuse it again.
    depth: int = 0
    # Tool servers the request brings to this turn, next to the agent's own (the
    # Responses API's ``mcp`` tools).
    tool_servers: tuple[ToolServer, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """A completed step of a turn's tool loop: the assistant's message with its calls, a
    result message per call the agent ran (OpenAI's shapes, as the session stores
    them), and the usage of the model call that asked for them."""

    said: dict[str, Any]
    results: list[dict[str, Any]]
    usage: dict[str, Any]


class Checkpoint(abc.ABC):
    """Where a turn's tool loop records every step it completes (one store round trip
    each), so that a later run of the same turn goes on after the last one instead of
    running their tool calls again. A step cut short (an interrupt) is not recorded."""

    __slots__ = ()

    @abc.abstractmethod
    def recorded(self) -> Sequence[RecordedStep]:
        """The steps an earlier run recorded, in order (empty: start from the first)."""

    @abc.abstractmethod
    async def step(self, step: RecordedStep) -> None:
        """Record the next completed step."""


@dataclass(frozen=True, slots=True)
class ToolRun:
    """One server-side tool call of a turn: the call as the model wrote it (OpenAI's
    shape), the server and tool that ran it, its result and how long it took (s)."""

    call: Mapping[str, Any]
    server: str
    tool: str
    result: ToolResult
    seconds: float


@dataclass(slots=True)
class Timings:
    """Where a turn's time went, in seconds (for Server-Timing and /metrics)."""

    session: float = 0.0
    upstream_ttft: float = 0.0
    upstream: float = 0.0
    persist: float = 0.0
    # The tool loop's steps (wall time of their tool calls; 0 without any), and its
    # Server-Timing entries ("" for a turn without tools).
    tools: float = 0.0
    loop: str = ""

    def stages(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in _STAGES}

    def header(self, parse: float = 0.0) -> str:
        """The ``Server-Timing`` value: parse, then every stage, in milliseconds."""
        # One %-format (the same text as each value formatted with :.2f): it runs on
        # every reply. A cache hit's stages all print 0.00: that text is made once.
        session, ttft = self.session * 1000, self.upstream_ttft * 1000
        upstream, persist = self.upstream * 1000, self.persist * 1000
        if session < _PRINTS_ZERO and ttft < _PRINTS_ZERO and upstream < _PRINTS_ZERO and (
            persist < _PRINTS_ZERO
            # not negative, -0.0 included (it prints -0.00); NaN failed above
            and copysign(1.0, session) + copysign(1.0, ttft) + copysign(1.0, upstream)
            + copysign(1.0, persist) == 4.0
        ):  # fmt: skip
            return _PARSE_TIMING % (parse * 1000) + self.loop
        value = _SERVER_TIMING % (parse * 1000, session, ttft, upstream, persist)
        return value + self.loop if self.loop else value

    def add_loop(self, steps: int, runs: list[ToolRun]) -> None:
        """The tool loop's entries: its tool time and model calls, then each tool call
        (``tool;desc="SERVER/TOOL"``) in the order they were made."""
        parts = [f", tools;dur={self.tools * 1000:.2f}, steps;desc={steps}"]
        for run in runs:
            parts.append(f', tool;desc="{run.server}/{run.tool}";dur={run.seconds * 1000:.2f}')
        self.loop = "".join(parts)


class ReplayTimings(Timings):
    """The timings of a reply replayed from the L1 at once: every stage 0 (no session,
    no upstream), so its ``Server-Timing`` has one value to format."""

    __slots__ = ()

    def header(self, parse: float = 0.0) -> str:
        return _PARSE_TIMING % (parse * 1000) + self.loop


_STAGES = ("session", "upstream_ttft", "upstream", "persist")
_SERVER_TIMING = ", ".join(f"{k};dur=%.2f" for k in ("parse", *_STAGES))
# Milliseconds below this (and not negative) print as 0.00 with %.2f (0.005 may round up).
_PRINTS_ZERO = 0.004
_PARSE_TIMING = "parse;dur=%.2f" + "".join(f", {k};dur=0.00" for k in _STAGES)


@dataclass(slots=True)
class TurnResult:
    """The end of a turn: what was said, where the reply came from, and what was stored
    (nothing without a session)."""

    text: str
    finish_reason: str
    usage: dict[str, Any]
    node: str
    model: str
    stored: list[dict[str, Any]]
    timings: Timings
    # hit-l1 | hit-l2 | hit-l3 | miss (a model call made it, through the cache) | bypass
    cache: str
    # The id stored on the turn's messages ("" for a turn without a session).
    turn_id: str = ""
    cancelled: bool = False
    # OpenAI's x-ratelimit-* headers of the caller's limits (empty when none apply).
    ratelimit: Mapping[str, str] = field(default_factory=dict)
    # The tool calls the model asked for, whole, in OpenAI's shape (None: none).
    tool_calls: list[dict[str, Any]] | None = None
    # Model calls made (more than one when the agent's tool loop ran).
    steps: int = 1
    # The agent's tool calls the loop ran, in order.
    tool_runs: list[ToolRun] = field(default_factory=list)

    @property
    def seq(self) -> int | None:
        return self.stored[-1]["seq"] if self.stored else None


class Listener:
    """Hears a turn as it runs, for a caller that streams it; this base hears nothing.

    ``source`` comes once, before any delta: where the reply comes from (a cache level,
    ``miss`` or ``bypass``), for headers sent with the first delta. A delta is a piece of
    the reply's text (or of its tool calls); a turn that fails before its first delta has
    told its listener nothing it must take back.
    """

    __slots__ = ()

    def source(self, cache: str) -> None:
        """Where the reply comes from (the value of ``TurnResult.cache``)."""

    async def delta(self, text: str) -> None:
        """A piece of the reply's text."""

    def ended(self, finish_reason: str, usage: Mapping[str, Any]) -> None:
        """The reply is whole and what the turn still does (counting, settling the
        caller's limits) changes nothing a client hears: told then, before that work,
        so a stream can end at once. Told only for a turn of one model call, without a
        session and with no tool calls in its reply (nothing can fail after it)."""

    async def tool_deltas(self, pieces: list[dict[str, Any]]) -> None:
        """Pieces of the reply's tool calls, in OpenAI's streamed shape (``index``, and
        on a call's first piece its ``id``, ``type`` and ``function.name``; then
        ``function.arguments`` fragments)."""

    def limits(self, headers: Mapping[str, str]) -> None:
        """The caller's x-ratelimit-* headers, once admitted (before any delta)."""

    async def tools_listed(self, tools: ToolSet) -> None:
        """The turn's server-side tools, listed once it is admitted (before any model
        call): only for a turn that has some."""

    async def tool_step(self, calls: Sequence[Mapping[str, Any]]) -> None:
        """A step of the turn's loop starts these server-side calls (OpenAI's shape), told
        before the :meth:`tool_call` of each; not told for the steps a resumed turn
        goes on after (:class:`Checkpoint`), whose calls it tells again as they ran."""

    async def tool_call(self, call: Mapping[str, Any], server: str) -> None:
        """A server-side tool call starts (the turn's loop runs it): the call in
        OpenAI's shape (``id``, ``function.name``, ``function.arguments``) and the label
        of the tool server it goes to."""

    async def tool_result(self, call: Mapping[str, Any], result: ToolResult) -> None:
        """A server-side tool call ended with ``result`` (what the model will see)."""
