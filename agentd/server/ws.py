"""WebSocket chat at ``GET /v1/ws``: JSON text frames, documented in docs/protocol.md.

Per connection: the handler reads client frames; a writer task, while frames are
queued, drains the bounded queue of outgoing ones (a client that reads too slowly is
closed with 1013 and resumes); a watcher task, while the session's events (what other
connections, on any instance, add to it) are coming in, forwards them; one task per
running turn streams deltas. An idle connection holds no task of its own besides its
handler, and no buffer (a worker holds tens of thousands). Client mistakes get an
error frame and the connection lives on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from ..agent import Agents, Listener, TurnRequest, TurnResult, new_turn_id
from ..errors import AgentdError, BadRequest
from ..schema import MAX_SEQ, validate_session_id
from ..store import Event, Store, Watch
from ..tools import ToolResult
from ..wire.tool_progress import call_ended, call_started
from .auth import WS_PATH, WS_PROTOCOL, check_ws_offer
from .http import loads_json
from .keys import AGENTS, CONFIG, METRICS, tracked_websocket
from .tenancy import store_of
from .ws_auth import CredentialWatch

__all__ = ("setup",)

log = logging.getLogger(__name__)

# How long closing a connection waits for its session watcher to stop.
WATCHER_STOP_S = 2.0
CLOSE_TRY_AGAIN = 1013  # the client read too slowly: resume with hello {after}
# Watches being closed, held until they are (the loop keeps only weak references to
# tasks); one set for the worker, not an empty one per connection.
_RELEASING: set[asyncio.Task[None]] = set()


def _done_frame(frame_id: Any, done: TurnResult) -> dict[str, Any]:
    return {
        "type": "done",
        "id": frame_id,
        "seq": done.seq,
        "message": done.stored[-1] if done.stored else None,
        "usage": done.usage,
        "finish_reason": done.finish_reason,
    }


def _turn_id(frame: dict[str, Any]) -> str | int:
    """The ``id`` a message or cancel frame names its turn by: a string or an integer."""
    frame_id = frame.get("id")
    if not isinstance(frame_id, (str, int)) or isinstance(frame_id, bool):
        raise BadRequest(
            f"a {frame.get('type')} frame needs an id (string or integer)", code="invalid_frame"
        )
    return frame_id


class _DeltaFrames(Listener):
    """A turn's deltas, as frames to the connection that asked for it."""

    __slots__ = ("conn", "frame_id")

    def __init__(self, conn: _Connection, frame_id: Any) -> None:
        self.conn, self.frame_id = conn, frame_id

    async def delta(self, text: str) -> None:
        self.conn.send({"type": "delta", "id": self.frame_id, "content": text})

    async def tool_call(self, call: Mapping[str, Any], server: str) -> None:
        self.conn.send({**call_started(call, server), "id": self.frame_id})

    async def tool_result(self, call: Mapping[str, Any], result: ToolResult) -> None:
        doc = call_ended(call, result.outcome, result.is_error, result.text)
        self.conn.send({**doc, "id": self.frame_id})


class _Connection:
    __slots__ = ("agent", "agents", "closer", "closing", "credential", "events", "max_turns",
                 "outbox", "overflows", "own_turns", "send_limit", "session_id",
                 "store", "turn_timeout", "turns", "watcher", "writer", "ws")  # fmt: skip

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        config = request.app[CONFIG]
        self.ws = ws
        self.store: Store = store_of(request)  # the caller's tenant's sessions only
        self.agents: Agents = request.app[AGENTS]
        self.overflows = request.app[METRICS].websocket_overflows
        self.turn_timeout = config.server.turn_timeout
        self.max_turns = config.websocket.max_inflight_turns
        self.send_limit = config.websocket.send_queue
        self.outbox: collections.deque[bytes] | None = None  # frames not yet written
        self.writer: asyncio.Task[None] | None = None  # runs while the outbox has frames
        self.session_id: str | None = None
        self.agent = self.agents.all()[0].name if self.agents.all() else ""
        self.turns: dict[str, asyncio.Task[None]] = {}
        self.own_turns: set[str] = set()
        self.events: Watch | None = None
        self.watcher: asyncio.Task[None] | None = None  # runs while events come in
        self.closing = False
        self.closer: asyncio.Future[bool] | None = None
        # The connection's credential: its expiry, and refreshes by an auth frame.
        self.credential = CredentialWatch(request, self.send, self.close_with)

    # -- sending ----------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame; a full queue means the client is not reading: close 1013."""
        if self.closing:
            return
        if self.outbox is None:
            self.outbox = collections.deque()
        elif len(self.outbox) >= self.send_limit:
            log.info("websocket client too slow; closing with 1013")
            self.overflows.inc()
            self.close_with(CLOSE_TRY_AGAIN, b"too slow")
            return
        self.outbox.append(orjson.dumps(frame))
        if self.writer is None:
            self.writer = asyncio.create_task(self.write_out())

    def close_with(self, code: int, reason: bytes) -> None:
        """Close from outside the handler's read loop: its ``receive`` then ends."""
        if self.closing:
            return
        self.closing = True
        self.closer = asyncio.ensure_future(self.ws.close(code=code, message=reason))

    def error(self, exc: AgentdError, frame_id: Any = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": exc.code, "message": exc.message}
        if frame_id is not None:
            frame["id"] = frame_id
        if exc.retry_after is not None:  # a 429: when to try again, in seconds
            frame["retry_after"] = exc.retry_after
        self.send(frame)

    async def write_out(self) -> None:
        """Write the queued frames, then end: the next ``send`` starts another."""
        try:
            while self.outbox:
                await self.ws.send_frame(self.outbox.popleft(), WSMsgType.TEXT)
        except ConnectionError as exc:  # the transport went away
            log.debug("websocket write failed: %s", exc)
            self.closing = True  # the read loop ends on the lost connection
        finally:
            self.writer = None
            if not self.outbox:
                self.outbox = None  # an idle connection holds no buffer

    # -- client frames ----------------------------------------------------------------

    async def handle(self, raw: str) -> None:
        frame = loads_json(raw, "the frame")
        if not isinstance(frame, dict):
            raise BadRequest("a frame must be a JSON object", code="invalid_frame")
        kind = frame.get("type")
        if kind == "ping":
            self.send({"type": "pong"})
        elif kind == "hello":
            await self.hello(frame)
        elif kind == "message":
            try:
                await self.message(frame)
            except AgentdError as exc:
                # Name the refused frame's id, so the client knows which turn it was.
                self.error(exc, frame.get("id"))
        elif kind == "cancel":
            task = self.turns.get(_turn_id(frame))
            if task is not None:
                task.cancel()
        elif kind == "auth":
            await self.credential.refresh(frame, self.session_id)
        else:
            raise BadRequest(f"unknown frame type {kind!r}", code="unknown_type")

    async def hello(self, frame: dict[str, Any]) -> None:
        if self.session_id is not None:
            raise BadRequest("hello was already sent on this connection", code="invalid_frame")
        agent = frame.get("agent")
        if agent is not None:
            if not isinstance(agent, str):
                raise BadRequest("agent must be a string", code="invalid_frame")
            self.agents.get(agent)  # 404-style error frame for an unknown agent
            self.credential.identity.check_agent(agent)
            self.agent = agent
        after = frame.get("after")
        if after is not None and (
            not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= MAX_SEQ
        ):
            raise BadRequest(f"after must be a sequence number (0 to {MAX_SEQ})",
                             code="invalid_range")  # fmt: skip
        sid = frame.get("session_id")
        identity = self.credential.identity
        if sid is None:
            identity.check_new_session()
            info = await self.store.create_session(agent=self.agent)
        else:
            identity.check_session(validate_session_id(sid))
            info = await self.store.get_session(sid)
        self.events = await self.store.open_watch(info.id, after)
        self.session_id = info.id
        self.send({"type": "ready", "session_id": info.id, "seq": info.last_seq})
        self.events.notify(self.wake)
        self.wake()  # the catch-up from ``after``, if any

    def wake(self) -> None:
        """Events came in: forward them, in a task that ends when they stop."""
        if (self.watcher is None or self.watcher.done()) and not self.closing:
            self.watcher = asyncio.create_task(self.follow())
            self.watcher.add_done_callback(self.followed)

    def release(self) -> None:
        """Stop watching and close the events (closing twice does nothing)."""
        events, self.events = self.events, None
        if events is None:
            return
        events.notify(None)
        task = asyncio.ensure_future(events.aclose())
        _RELEASING.add(task)
        task.add_done_callback(_RELEASING.discard)

    async def follow(self) -> bool:
        """Forward the session's events that are in; a connection's own turns arrive as
        done frames. Whether the events ended (with the session, or an error frame)."""
        try:
            while self.events is not None and (event := await self.events.next_ready()):
                self.forward(event)
            return False
        except StopAsyncIteration:
            return True
        except AgentdError as exc:
            self.error(exc)
            return True
        finally:  # now, not in a done callback: an event arriving next needs a watcher
            if self.watcher is asyncio.current_task():
                self.watcher = None

    def followed(self, task: asyncio.Task[bool]) -> None:
        """Release the events once no watcher will read them: a watcher cancelled
        before its first step never ran ``follow`` at all."""
        if task.cancelled() or self.closing:
            self.release()
        elif (exc := task.exception()) is not None:
            log.error("watching session %s failed", self.session_id, exc_info=exc)
            self.release()
        elif task.result():
            self.release()

    def forward(self, event: Event) -> None:
        if event.kind != "messages":
            self.send({"type": "event", "event": event.kind, "data": event.data})
            return
        mine = set()
        for message in event.messages:
            if (turn := message.get("turn")) in self.own_turns:
                mine.add(turn)
                continue
            self.send({"type": "event", "seq": message["seq"], "message": message})
        # A turn stores its messages in one append, so one event: its id is done with
        # (kept, a long-lived connection would hold one id per turn it ever ran).
        self.own_turns -= mine

    async def message(self, frame: dict[str, Any]) -> None:
        frame_id = _turn_id(frame)
        if frame_id in self.turns:
            raise BadRequest(f"a turn with id {frame_id!r} is running", code="duplicate_id")
        if len(self.turns) >= self.max_turns:
            raise BadRequest(f"at most {self.max_turns} turns may run at once",
                             code="too_many_turns")  # fmt: skip
        content = frame.get("content")
        if not isinstance(content, (str, list)):
            raise BadRequest("content must be a string or a list of parts", code="invalid_frame")
        agent = frame.get("agent", self.agent)
        if not isinstance(agent, str):
            raise BadRequest("agent must be a string", code="invalid_frame")
        self.agents.get(agent)
        self.credential.identity.check_agent(agent)
        if self.session_id is None:
            await self.hello({"agent": agent})
        turn = TurnRequest(
            agent,
            [{"role": "user", "content": content}],
            self.session_id,
            turn_id=new_turn_id(),
            tenant=self.credential.identity.tenant,
            identity=self.credential.identity,
        )
        self.own_turns.add(turn.turn_id)
        task = asyncio.create_task(self.run_turn(frame_id, turn))
        self.turns[frame_id] = task
        task.add_done_callback(lambda _: self.turn_ended(frame_id, turn.turn_id, task))

    def turn_ended(self, frame_id: Any, turn_id: str, task: asyncio.Task[bool]) -> None:
        """Forget a turn. Its task may never have run: a cancel read right behind its
        message lands before the first step, and then ``run_turn`` says nothing."""
        if self.turns.get(frame_id) is task:
            del self.turns[frame_id]
        if task.cancelled():
            self.send({"type": "cancelled", "id": frame_id})
        if task.cancelled() or not task.result():  # no event will name it
            self.own_turns.discard(turn_id)

    async def run_turn(self, frame_id: Any, turn: TurnRequest) -> bool:
        """Run a turn, telling the client how it ends; whether it stored anything."""
        deadline = asyncio.get_running_loop().time() + self.turn_timeout
        stored = False
        try:
            done = await self.agents.run(
                turn, deadline=deadline, listener=_DeltaFrames(self, frame_id)
            )
            stored = bool(done.stored)
            self.send(_done_frame(frame_id, done))
        except asyncio.CancelledError:
            self.send({"type": "cancelled", "id": frame_id})
        except AgentdError as exc:
            self.error(exc, frame_id)
        except Exception:
            log.exception("turn %r failed", frame_id)
            self.send({"type": "error", "id": frame_id, "code": "internal_error",
                       "message": "internal server error"})  # fmt: skip
        return stored

    async def close(self) -> None:
        """Stop watching; let running turns finish and be stored (within the turn
        timeout), so a client that dropped finds the reply when it resumes."""
        self.closing = True
        if self.watcher is not None:  # it releases the events as it ends
            self.watcher.cancel()
            # Bounded: closing never waits on a watcher that does not end.
            await asyncio.wait({self.watcher}, timeout=WATCHER_STOP_S)
        else:
            self.release()
        if self.turns:
            await asyncio.wait(list(self.turns.values()), timeout=self.turn_timeout)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    config = request.app[CONFIG].websocket
    check_ws_offer(request)
    ws = web.WebSocketResponse(
        heartbeat=config.heartbeat,
        max_msg_size=config.max_frame_bytes,
        compress=False,
        protocols=(WS_PROTOCOL,),
    )
    await ws.prepare(request)
    conn = _Connection(request, ws)
    with tracked_websocket(request.app, ws):
        try:
            conn.credential.start()
            while True:
                try:
                    msg = await ws.receive(timeout=config.idle_timeout)
                except TimeoutError:
                    await ws.close(code=WSCloseCode.GOING_AWAY, message=b"idle")
                    break
                if msg.type == WSMsgType.TEXT:
                    try:
                        await conn.handle(msg.data)
                    except AgentdError as exc:
                        conn.error(exc)
                elif msg.type == WSMsgType.BINARY:
                    conn.error(BadRequest("frames must be JSON text", code="unsupported_frame"))
                else:  # close, closing, closed or error (aiohttp sets the close code)
                    break
        finally:
            conn.credential.stop()
            try:
                await conn.close()
            finally:  # even when the handler is cancelled while closing (a drain)
                if (writer := conn.writer) is not None:
                    writer.cancel()
                    with contextlib.suppress(BaseException):
                        await writer
    return ws


def setup(app: web.Application) -> None:
    app.router.add_get(WS_PATH, websocket)
