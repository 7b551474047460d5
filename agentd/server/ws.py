"""WebSocket chat at ``GET /v1/ws``: JSON text frames, documented in docs/protocol.md.

aiohttp answers the opening handshake (routing, middlewares, auth); then the handler
takes the connection over: the transport's protocol becomes the connection itself,
which parses frames as bytes arrive (``ws_frames``), and aiohttp forgets it. So an idle
connection is one small object, its entry in the worker's timer wheel (heartbeat, idle
and close timeouts, to the second) and its session watch: no task, no request, no reader
or queue, no timer of its own (a worker holds tens of thousands).

Frames run in the order they came: most at once (ping, message, cancel); one that waits
on the store (hello, auth, a message before any hello) runs in a task that then takes
the frames behind it, and ends. Outgoing frames sent in one step of the event loop (a
turn's deltas and its done, when the reply is whole at once) go to the transport
together, in one write, right after that step (no timer); while the transport is full
(the client reads slowly) they wait in a bounded queue, and a client that lets it fill
is closed with 1013 and resumes. The session's events (what other connections,
on any instance, add to it) are forwarded as they arrive, or, when history must be read
first (after a gap), by a task that runs while they come in. A turn runs where its
message is read until it first waits, and in a task of its own from there: one that
never waits (the echo on the in-memory store) needs none. Client mistakes get an error
frame and the connection lives on; protocol errors close it (1002, 1007, 1009), as
RFC 6455 says, lingering (``ws_linger``: the client still reads the close frame).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine
from typing import Any

import orjson
from aiohttp import web

from ..agent import Agents, TurnRequest, new_turn_id
from ..aio import start
from ..errors import AgentdError, BadRequest, Internal
from ..schema import MAX_SEQ, validate_session_id
from ..store import Event, Store, Watch
from . import ws_frames
from .auth import WS_PATH, WS_PROTOCOL, check_ws_offer
from .http import loads_json
from .keys import AGENTS, CONFIG, METRICS, STATE
from .tenancy import store_of
from .ws_auth import CredentialWatch
from .ws_frames import FrameError
from .ws_linger import linger
from .ws_turn import DeltaFrames, done_frame, turn_id

__all__ = ("setup",)

log = logging.getLogger(__name__)

CLOSE_OK = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013  # the client read too slowly: resume with hello {after}
# How long a close the server starts waits for the client's close frame (aiohttp's).
CLOSE_TIMEOUT_S = 10.0
# Frames read behind one that waits (a hello) before reading pauses until it is done.
INBOX_LIMIT = 64
# Watches being closed, held until they are (the loop keeps only weak references to
# tasks); one set for the worker, not an empty one per connection.
_RELEASING: set[asyncio.Task[None]] = set()
_PING = ws_frames.build(ws_frames.OP_PING, b"")


class _Shared:
    """What every connection of the worker reads: one object, not copies per connection."""

    __slots__ = ("agents", "clock", "clock_at", "due", "gauge", "heartbeat", "idle_timeout",
                 "loop", "max_frame", "max_turns", "overflows", "send_limit", "state",
                 "turn_timeout")  # fmt: skip

    def __init__(self, app: web.Application) -> None:
        config = app[CONFIG]
        self.loop = asyncio.get_running_loop()
        self.agents: Agents = app[AGENTS]
        self.overflows = app[METRICS].websocket_overflows
        self.gauge = app[METRICS].websockets
        self.state = app[STATE]
        self.turn_timeout = config.server.turn_timeout
        self.max_turns = config.websocket.max_inflight_turns
        self.send_limit = config.websocket.send_queue
        self.max_frame = config.websocket.max_frame_bytes
        self.heartbeat = config.websocket.heartbeat
        self.idle_timeout = config.websocket.idle_timeout
        # The connections' timers, by the second they are due: one loop timer for the
        # worker, not one per connection (each costs about 0.9 KiB).
        self.due: dict[int, set[_Connection]] = {}
        self.clock: asyncio.TimerHandle | None = None
        self.clock_at = 0

    def schedule(self, conn: _Connection, when: float) -> int:
        """Have ``conn.tick`` run at ``when`` (to the next whole second); its key."""
        key = int(when) + 1
        bucket = self.due.get(key)
        if bucket is None:
            bucket = self.due[key] = set()
        bucket.add(conn)
        if self.clock is None or key < self.clock_at:
            self._set_clock(key)
        return key

    def unschedule(self, conn: _Connection, key: int) -> None:
        bucket = self.due.get(key)
        if bucket is not None:
            bucket.discard(conn)
            if not bucket:
                del self.due[key]

    def _set_clock(self, key: int) -> None:
        if self.clock is not None:
            self.clock.cancel()
        self.clock, self.clock_at = self.loop.call_at(key, self._turn), key

    def _turn(self) -> None:
        self.clock = None
        now = self.loop.time()
        for key in [k for k in self.due if k <= now]:
            for conn in self.due.pop(key):
                conn.due = None
                try:
                    conn.tick()
                except Exception:
                    log.exception("websocket timer failed")
        if self.due:
            self._set_clock(min(self.due))


_SHARED = web.AppKey("websocket_shared", _Shared)


class _Connection(asyncio.Protocol):
    """One WebSocket: the transport's protocol from the upgrade on."""

    __slots__ = ("agent", "buffer", "closed", "closing", "credential", "due", "events", "inbox",
                 "last_seen", "outbox", "partial", "pending", "ping_at", "reader",
                 "session_id", "shared", "store", "transport", "turns", "watcher",
                 "write_paused")  # fmt: skip

    def __init__(self, request: web.Request, shared: _Shared) -> None:
        self.shared = shared
        self.store: Store = store_of(request)  # the caller's tenant's sessions only
        self.transport: asyncio.Transport | None = None
        self.buffer = b""  # bytes of a frame not all read yet
        self.partial: list[Any] | None = None  # a fragmented message: [opcode, parts...]
        self.inbox: collections.deque[str] | None = None  # frames behind a waiting one
        self.reader: asyncio.Task[None] | None = None  # runs while the inbox has frames
        self.outbox: collections.deque[bytes] | None = None  # frames the transport refused
        self.pending: list[bytes] | None = None  # frames sent in this step, written at its end
        self.write_paused = False
        self.last_seen = shared.loop.time()
        self.ping_at: float | None = None  # a heartbeat ping not yet answered
        self.due: int | None = None  # when tick runs: heartbeat, idle, close timeout
        self.session_id: str | None = None
        agents = shared.agents.all()
        self.agent = agents[0].name if agents else ""
        self.turns: dict[Any, asyncio.Task[bool]] | None = None
        self.events: Watch | None = None
        self.watcher: asyncio.Task[bool] | None = None  # runs while events come in
        self.closing = False  # a close frame was sent or received: nothing more is sent
        self.closed: asyncio.Future[None] | None = None  # for close(): the transport's end
        # The connection's credential: its expiry, and refreshes by an auth frame.
        self.credential = CredentialWatch(request, self)

    # -- the transport --------------------------------------------------------------------

    def take_over(self, transport: asyncio.Transport) -> None:
        """Become the transport's protocol; start the heartbeat and the credential's watch."""
        self.transport = transport
        transport.set_protocol(self)
        shared = self.shared
        shared.state.websockets.add(self)
        shared.gauge.inc()
        self.arm(self.last_seen + min(shared.heartbeat, shared.idle_timeout))
        self.credential.start()

    # aiohttp's request handler feeds the bytes read behind the handshake through here.
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data_received(data)
        return False, b""

    def feed_eof(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.last_seen = self.shared.loop.time()
        buffer = self.buffer + data if self.buffer else data
        start = 0
        try:
            while (frame := ws_frames.next_frame(buffer, start, self.shared.max_frame)) is not None:
                fin, opcode, payload, start = frame
                self.frame(fin, opcode, payload)
                if self.transport is None:
                    return
        except FrameError as exc:
            log.debug("websocket protocol error: %s", exc.reason)
            self.buffer, self.partial = b"", None
            self.fail(exc.code)
            return
        self.buffer = buffer[start:] if start < len(buffer) else b""

    def eof_received(self) -> bool:
        return False  # close the transport: a half-closed WebSocket is a closed one

    def connection_lost(self, exc: BaseException | None) -> None:
        self.end()

    def end(self) -> None:
        """The connection is over (once, whoever sees it first): stop reading, watching
        and timing."""
        if self.transport is None:
            return
        self.transport = None
        self.closing = True
        self.buffer, self.partial, self.outbox, self.inbox = b"", None, None, None
        self.pending = None
        if self.due is not None:
            self.shared.unschedule(self, self.due)
            self.due = None
        self.credential.stop()
        if self.watcher is not None:  # it releases the events as it ends
            self.watcher.cancel()
        else:
            self.release()
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        # Running turns finish and are stored: a client that dropped finds the reply
        # when it resumes. The connection counts as open until they have.
        self.maybe_ended()

    def maybe_ended(self) -> None:
        """Forget a connection whose transport, turns, reader and watcher have all ended."""
        if (
            self.transport is None
            and not self.turns
            and self.reader is None
            and (self.watcher is None or self.watcher.done())
        ):
            state = self.shared.state
            if self in state.websockets:
                state.websockets.discard(self)
                self.shared.gauge.dec()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        outbox, transport = self.outbox, self.transport
        while outbox and transport is not None and not self.write_paused:
            transport.write(outbox.popleft())
        if not outbox:
            self.outbox = None  # an idle connection holds no buffer

    # -- timers: heartbeat, idle, close ---------------------------------------------------

    def arm(self, when: float) -> None:
        if self.due is not None:
            self.shared.unschedule(self, self.due)
        self.due = self.shared.schedule(self, when)

    def tick(self) -> None:
        """Ping a connection that said nothing for ``heartbeat`` seconds; drop one that
        does not answer within half that (aiohttp's rule); close one silent for
        ``idle_timeout`` with 1001. Re-armed as it runs."""
        if self.transport is None:
            return
        shared = self.shared
        now = shared.loop.time()
        if self.closing:  # the client never answered our close frame
            self.transport.abort()
            return
        if now - self.last_seen >= shared.idle_timeout:
            self.close_with(CLOSE_GOING_AWAY, b"idle")
            return
        if self.ping_at is not None:
            if self.last_seen < self.ping_at:  # nothing since the ping
                log.debug("websocket ping not answered in %.1f s", shared.heartbeat / 2)
                self.transport.abort()
                return
            self.ping_at = None
        if now - self.last_seen >= shared.heartbeat:
            self.ping_at = now
            self.write_now(_PING)
            when = now + shared.heartbeat / 2
        else:
            when = self.last_seen + shared.heartbeat
        self.arm(min(when, self.last_seen + shared.idle_timeout))

    # -- sending ----------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        """Send a frame; a full queue means the client is not reading: close 1013."""
        if self.closing or self.transport is None:
            return
        self.send_json(orjson.dumps(frame))

    def send_json(self, doc: bytes) -> None:
        """:meth:`send` of a frame already in JSON."""
        if self.closing or self.transport is None:
            return
        data = ws_frames.text(doc)
        if self.outbox is None:
            if not self.write_paused:
                # Written with the others sent in this step of the loop: one system call
                # for a turn's deltas and done, not one per frame.
                if self.pending is None:
                    self.pending = [data]
                    self.shared.loop.call_soon(self.flush)
                else:
                    self.pending.append(data)
                return
            self.outbox = collections.deque()
        elif len(self.outbox) >= self.shared.send_limit:
            log.info("websocket client too slow; closing with 1013")
            self.shared.overflows.inc()
            self.close_with(CLOSE_TRY_AGAIN, b"too slow")
            return
        if self.pending is not None:  # sent before the transport filled: they go first
            self.outbox.extend(self.pending)
            self.pending = None
        self.outbox.append(data)

    def flush(self) -> None:
        """Write the frames sent since the last flush, in one write."""
        pending, self.pending = self.pending, None
        if pending and self.transport is not None:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write_now(self, data: bytes) -> None:
        """Write a control frame, after the frames sent before it."""
        assert self.transport is not None
        if self.pending is not None:
            self.flush()
        self.transport.write(data)

    def close_with(self, code: int, reason: bytes) -> None:
        """Send a close frame; the transport ends when the client answers it, or after
        ``CLOSE_TIMEOUT_S``. Frames not yet written are dropped."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.outbox = None
        self.write_now(ws_frames.build(ws_frames.OP_CLOSE, code.to_bytes(2, "big") + reason))
        self.arm(self.shared.loop.time() + CLOSE_TIMEOUT_S)

    def fail(self, code: int) -> None:
        """The client broke the protocol: close frame, then close lingering (``ws_linger``)."""
        transport = self.transport
        if transport is None:
            return
        if not self.closing:
            self.closing = True
            self.outbox = None
            self.write_now(ws_frames.build(ws_frames.OP_CLOSE, code.to_bytes(2, "big")))
        linger(transport)
        self.end()  # the connection hears no more

    async def close(self, *, code: int = CLOSE_GOING_AWAY, message: bytes = b"") -> None:
        """Close with ``code`` and wait until the connection has ended (the drain)."""
        if self.transport is None:
            return
        if self.closed is None:
            self.closed = self.shared.loop.create_future()
        self.close_with(code, message)
        await self.closed

    def error(self, exc: AgentdError, frame_id: Any = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": exc.code, "message": exc.message}
        if frame_id is not None:
            frame["id"] = frame_id
        if exc.retry_after is not None:  # a 429: when to try again, in seconds
            frame["retry_after"] = exc.retry_after
        self.send(frame)

    # -- frames -------------------------------------------------------------------------

    def frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode >= ws_frames.OP_CLOSE:
            self.control(opcode, payload)
            return
        partial = self.partial
        if opcode == ws_frames.OP_CONTINUATION:
            if partial is None:
                raise FrameError(1002, "continuation frame with no message started")
            partial.append(payload)
            if sum(len(p) for p in partial[1:]) > self.shared.max_frame:
                raise FrameError(1009, f"message exceeds limit {self.shared.max_frame}")
            if not fin:
                return
            self.partial = None
            opcode, payload = partial[0], b"".join(partial[1:])
        elif partial is not None:
            raise FrameError(1002, "a new message before the last one ended")
        elif not fin:
            self.partial = [opcode, payload]
            return
        if self.closing:
            return  # a close was sent: what the client says until it answers is not read
        if opcode == ws_frames.OP_BINARY:
            self.error(BadRequest("frames must be JSON text", code="unsupported_frame"))
            return
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            raise FrameError(1007, "text frame is not UTF-8") from None
        self.text(text)

    def control(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if opcode == ws_frames.OP_PING:
            self.write_now(ws_frames.build(ws_frames.OP_PONG, payload))
        elif opcode == ws_frames.OP_CLOSE:
            ws_frames.close_payload(payload)  # a malformed one is a protocol error
            if not self.closing:  # the client closes: answer, as RFC 6455 asks
                self.closing = True
                self.write_now(ws_frames.build(ws_frames.OP_CLOSE, CLOSE_OK.to_bytes(2, "big")))
            transport.close()
            self.end()
        # a pong: its arrival (last_seen) is all the heartbeat needs

    def text(self, raw: str) -> None:
        """A text frame: run it now, or after the one that is waiting."""
        inbox = self.inbox
        if inbox is not None:
            inbox.append(raw)
            if len(inbox) == INBOX_LIMIT and self.transport is not None:
                self.transport.pause_reading()
            return
        waiting = self.run_frame(raw)
        if waiting is not None:
            self.inbox = collections.deque()
            self.reader = asyncio.create_task(self.read_on(waiting))

    def run_frame(self, raw: str) -> Coroutine[Any, Any, None] | None:
        """Handle a frame; what must wait for the store comes back as a coroutine."""
        try:
            return self.handle(raw)
        except AgentdError as exc:
            self.error(exc)
            return None

    async def read_on(self, waiting: Coroutine[Any, Any, None]) -> None:
        """Finish a frame that waits, then the frames read behind it, in order."""
        try:
            while True:
                try:
                    await waiting
                except AgentdError as exc:
                    self.error(exc)
                except Exception:
                    # Not the client's mistake (the store failed in a way it has no code
                    # for): it still gets an answer, and the connection lives on.
                    log.exception("websocket frame failed")
                    self.error(Internal("internal server error"))
                inbox = self.inbox
                next_waiting = None
                while inbox and next_waiting is None and not self.closing:
                    if len(inbox) == INBOX_LIMIT and self.transport is not None:
                        self.transport.resume_reading()
                    next_waiting = self.run_frame(inbox.popleft())
                if next_waiting is None:
                    return
                waiting = next_waiting
        finally:
            if self.inbox and self.transport is not None and len(self.inbox) >= INBOX_LIMIT:
                self.transport.resume_reading()
            self.inbox = None
            self.reader = None
            self.maybe_ended()

    # -- client frames ----------------------------------------------------------------

    def handle(self, raw: str) -> Coroutine[Any, Any, None] | None:
        frame = loads_json(raw, "the frame")
        if not isinstance(frame, dict):
            raise BadRequest("a frame must be a JSON object", code="invalid_frame")
        kind = frame.get("type")
        if kind == "ping":
            self.send({"type": "pong"})
        elif kind == "hello":
            return self.hello(frame)
        elif kind == "message":
            try:
                return self.message(frame)
            except AgentdError as exc:
                # Name the refused frame's id, so the client knows which turn it was.
                self.error(exc, frame.get("id"))
        elif kind == "cancel":
            frame_id = turn_id(frame)
            if self.turns is not None and (task := self.turns.get(frame_id)) is not None:
                task.cancel()
        elif kind == "auth":
            return self.credential.refresh(frame, self.session_id)
        else:
            raise BadRequest(f"unknown frame type {kind!r}", code="unknown_type")
        return None

    async def hello(self, frame: dict[str, Any]) -> None:
        if self.session_id is not None:
            raise BadRequest("hello was already sent on this connection", code="invalid_frame")
        agent = frame.get("agent")
        if agent is not None:
            if not isinstance(agent, str):
                raise BadRequest("agent must be a string", code="invalid_frame")
            self.shared.agents.get(agent)  # 404-style error frame for an unknown agent
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
        if self.transport is None:  # the connection ended meanwhile
            self.release()
            return
        self.session_id = info.id
        self.send({"type": "ready", "session_id": info.id, "seq": info.last_seq})
        self.events.notify(self.wake)
        self.wake()  # the catch-up from ``after``, if any

    def wake(self) -> None:
        """Events came in: forward them now when they need no waiting (the common case:
        another connection's turn), else in a task that ends when they stop."""
        if (self.watcher is None or self.watcher.done()) and not self.closing:
            if self.events is not None:
                ready, more = self.events.poll()
                for event in ready:
                    self.forward(event)
                if not more:
                    return
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
        self.maybe_ended()

    def forward(self, event: Event) -> None:
        """An event of the session: never one of this connection's own turns (its watch
        holds them back, see ``start_turn``)."""
        if event.kind != "messages":
            self.send({"type": "event", "event": event.kind, "data": event.data})
            return
        for message in event.messages:
            self.send({"type": "event", "seq": message["seq"], "message": message})

    def message(self, frame: dict[str, Any]) -> Coroutine[Any, Any, None] | None:
        """Start a turn, or, before any hello, what binds a session and then starts it."""
        frame_id = turn_id(frame)
        turns = self.turns or {}
        if frame_id in turns:
            raise BadRequest(f"a turn with id {frame_id!r} is running", code="duplicate_id")
        if len(turns) >= self.shared.max_turns:
            raise BadRequest(f"at most {self.shared.max_turns} turns may run at once",
                             code="too_many_turns")  # fmt: skip
        content = frame.get("content")
        if not isinstance(content, (str, list)):
            raise BadRequest("content must be a string or a list of parts", code="invalid_frame")
        agent = frame.get("agent", self.agent)
        if not isinstance(agent, str):
            raise BadRequest("agent must be a string", code="invalid_frame")
        self.shared.agents.get(agent)
        self.credential.identity.check_agent(agent)
        if self.session_id is None:
            return self.hello_then_turn(frame_id, agent, content)
        self.start_turn(frame_id, agent, content)
        return None

    async def hello_then_turn(self, frame_id: Any, agent: str, content: Any) -> None:
        try:
            await self.hello({"agent": agent})
            if self.session_id is not None:
                self.start_turn(frame_id, agent, content)
        except AgentdError as exc:
            self.error(exc, frame_id)
        except Exception:
            log.exception("websocket hello for turn %r failed", frame_id)
            self.error(Internal("internal server error"), frame_id)

    def start_turn(self, frame_id: Any, agent: str, content: Any) -> None:
        identity = self.credential.identity
        turn = TurnRequest(
            agent,
            [{"role": "user", "content": content}],
            self.session_id,
            turn_id=new_turn_id(),
            tenant=identity.tenant,
            identity=identity,
        )
        if self.events is not None:  # its turns come as delta/done, never as events
            self.events.own(turn.turn_id)
        running = self.run_turn(frame_id, turn)
        if asyncio.current_task() is None:
            # Read straight off the transport: the turn runs here until it first waits,
            # and one that never does (the echo on the in-memory store) needs no task.
            started = start(running)
            if not isinstance(started, asyncio.Task):
                self.turn_over(turn.turn_id, started)
                return
            task = started
        else:  # behind a hello, in the reader's task: a task of its own
            task = asyncio.create_task(running)
        if self.turns is None:
            self.turns = {}
        self.turns[frame_id] = task
        task.add_done_callback(lambda _: self.turn_ended(frame_id, turn.turn_id, task))

    def turn_ended(self, frame_id: Any, turn_id: str, task: asyncio.Task[bool]) -> None:
        """Forget a turn. Its task may never have run: a cancel read right behind its
        message lands before the first step, and then ``run_turn`` says nothing."""
        if self.turns is not None and self.turns.get(frame_id) is task:
            del self.turns[frame_id]
            if not self.turns:
                self.turns = None
        if task.cancelled():
            self.send({"type": "cancelled", "id": frame_id})
        self.turn_over(turn_id, not task.cancelled() and task.result())

    def turn_over(self, turn_id: str, stored: bool) -> None:
        if not stored and self.events is not None:
            self.events.disown(turn_id)  # no event will name it
        self.maybe_ended()

    async def run_turn(self, frame_id: Any, turn: TurnRequest) -> bool:
        """Run a turn, telling the client how it ends; whether it stored anything."""
        deadline = self.shared.loop.time() + self.shared.turn_timeout
        stored = False
        try:
            done = await self.shared.agents.run(
                turn, deadline=deadline, listener=DeltaFrames(self, frame_id)
            )
            stored = bool(done.stored)
            self.send(done_frame(frame_id, done))
        except asyncio.CancelledError:
            self.send({"type": "cancelled", "id": frame_id})
        except AgentdError as exc:
            self.error(exc, frame_id)
        except Exception:
            log.exception("turn %r failed", frame_id)
            self.send({"type": "error", "id": frame_id, "code": "internal_error",
                       "message": "internal server error"})  # fmt: skip
        return stored


async def websocket(request: web.Request) -> web.StreamResponse:
    """The opening handshake, by aiohttp; then the connection is the ``_Connection``'s
    and this handler ends (aiohttp neither closes nor reuses a connection it forgot)."""
    check_ws_offer(request)
    headers = {
        "Upgrade": "websocket",
        "Connection": "upgrade",
        "Sec-WebSocket-Accept": ws_frames.accept_key(request),
    }
    offers = request.headers.get("Sec-WebSocket-Protocol", "")
    if WS_PROTOCOL in (offer.strip() for offer in offers.split(",")):
        headers["Sec-WebSocket-Protocol"] = WS_PROTOCOL
    conn = _Connection(request, request.app[_SHARED])
    response = web.StreamResponse(status=101, headers=headers)
    await response.prepare(request)
    transport, handler = request.transport, request.protocol
    if transport is None or transport.is_closing():
        return response  # the client left during the handshake
    # The bytes read behind the handshake come through feed_data; then the transport's
    # reads come straight to the connection, and aiohttp forgets it: its request handler,
    # without the transport, closes nothing (now, or when this handler returns) and
    # leaves the server's list of connections.
    conn.take_over(transport)
    handler.set_parser(conn)  # type: ignore[arg-type]
    handler.transport = None
    handler.connection_lost(None)
    return response


async def _start(app: web.Application) -> None:
    app[_SHARED] = _Shared(app)


def setup(app: web.Application) -> None:
    app.on_startup.append(_start)
    app.router.add_get(WS_PATH, websocket)
