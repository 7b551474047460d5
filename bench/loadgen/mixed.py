"""The soak's mixed load in one process, and the check that nothing acknowledged was lost.

``python -m bench.loadgen.mixed --url URL --sessions FILE --rate R --duration S`` runs,
for ``--warmup`` + ``--duration`` seconds, at once:

- chat turns (``POST /v1/chat/completions``, echo agent) in open loop at ``--rate`` per
  second, rotated over the sessions listed in FILE (one id a line), each with its own
  content (``soak N``); a turn's latency is counted from its intended send time, as in
  ``bench.loadgen.http``;
- ``--ws`` WebSocket connections (``GET /v1/ws``), each on a session of its own (the ids
  in ``--ws-sessions`` FILE, else new ones), sending a turn every ``1 / --ws-rate`` s and
  waiting for its ``done`` frame;
- a background response (``POST /v1/responses``, ``background: true``) every
  ``1 / --bg-rate`` s;
- a reader that follows every session's history (``GET /v1/sessions/{id}/messages`` after
  the last seq it read, every ``--check-every`` s) and checks each acknowledged turn (the
  chat completion's ``seq``, the WebSocket ``done`` frame's) against it: the user message
  at ``seq - 1`` with the turn's own content, the reply at ``seq``. Reading while the load
  runs keeps up with the trimming of ``sessions.max_messages``; a stretch that was trimmed
  before it was read is counted apart (``unverified``), never as checked.

With ``--fill TURNS`` it only runs that many chat turns on every session, closed loop
over ``--connections`` connections, and reports their rate (the soak's capacity probe,
which also fills the histories before the soak).

After the load it reads every history once more, waits (up to ``--settle`` s) for every
background response to reach a terminal status, and writes the figures as JSON to
``--out``. It prints ``measure-start`` / ``measure-end`` around the measured window (the
warm-up excluded) so the harness reads CPU and memory there. Loopback addresses only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from ..stats import summarize, windows
from .common import cpu_now
from .httpconn import HttpConnection, encode_request

__all__ = ("MixSpec", "main", "run_mix")

REQUEST_LIMIT = 30.0  # seconds one request or turn may take before it counts as an error
DRAIN_LIMIT = 30.0  # seconds the last chat turns may take once the schedule is over
TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
PRUNE_AFTER = 120.0  # seconds a read message waits for its acknowledgement at most


@dataclass(frozen=True)
class MixSpec:
    """One soak's load, as given on the command line."""

    host: str
    port: int
    sessions: tuple[str, ...]
    rate: float  # chat turns/s
    duration: float  # the measured window, s
    warmup: float = 0.0
    connections: int = 256  # most chat connections open at once
    ws: int = 20
    ws_rate: float = 2.0  # turns/s per WebSocket connection
    bg_rate: float = 1.0  # background responses/s
    window: float = 10.0  # p99 per window of this many seconds
    check_every: float = 5.0
    settle: float = 60.0
    ws_sessions: tuple[str, ...] = ()

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"


class _Conn(HttpConnection):
    """A kept-alive connection that keeps each response's bytes (its JSON body is read)."""

    last = b""

    def answered(self, buf: bytearray, size: int) -> None:
        self.last = bytes(buf[:size])

    def body(self) -> Any:
        return orjson.loads(self.last.split(b"\r\n\r\n", 1)[1])


async def _connect(spec: MixSpec) -> _Conn:
    _, conn = await asyncio.get_running_loop().create_connection(_Conn, spec.host, spec.port)
    return conn


@dataclass
class _Ack:
    seq: int
    content: str


@dataclass
class _History:
    """What the reader knows of one session: read messages waiting for their turn's
    acknowledgement, acknowledgements waiting to be read, and stretches trimmed unread."""

    last_read: int = -1  # -1: not read yet (the first read starts after the seq at hello)
    seen: dict[int, tuple[str, str, float]] = field(default_factory=dict)
    pending: list[_Ack] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)


class _Kind:
    """Counts, latencies and errors of one kind of load (chat, WebSocket, background)."""

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.errors: dict[str, int] = {}
        self.latencies = array("d")
        self.ends = array("d")

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def summary(self, elapsed: float, window: float = 0.0) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sent": self.sent,
            "acknowledged": self.acked,
            "measured": len(self.latencies),
            "per_s": round(len(self.latencies) / elapsed, 2) if elapsed > 0 else 0.0,
            "errors": self.errors,
            "error_count": sum(self.errors.values()),
            "latency_ms": summarize(self.latencies),
        }
        if window > 0:
            out["windows"] = windows(self.ends, self.latencies, window)
        return out


class Mix:
    """The whole soak load against one agentd."""

    def __init__(self, spec: MixSpec) -> None:
        self.spec = spec
        self.chat, self.ws, self.bg = _Kind(), _Kind(), _Kind()
        self.histories: dict[str, _History] = {sid: _History(last_read=0) for sid in spec.sessions}
        self.responses: list[str] = []
        self.t0 = 0.0  # the load's start (perf_counter)
        self.m0 = 0.0  # the measured window's start
        self.m1 = 0.0  # its end (the schedule's end)
        self.stopping = False
        self.verify = {"verified": 0, "lost": 0, "unverified": 0, "messages_read": 0}
        self.lost_examples: list[dict[str, Any]] = []

    def measuring(self, now: float) -> bool:
        return self.m0 <= now <= self.m1

    def record(self, kind: _Kind, intended: float, end: float) -> None:
        if self.measuring(intended):
            kind.latencies.append(end - intended)
            kind.ends.append(end - self.m0)

    # -- chat turns, open loop -------------------------------------------------------------

    def chat_request(self, n: int, sid: str = "") -> tuple[str, str, bytes]:
        """Turn ``n``: its session (``sid``, or the next in turn), its own content, and
        the request's bytes."""
        sid = sid or self.spec.sessions[n % len(self.spec.sessions)]
        content = f"soak {n}"
        message = {"role": "user", "content": content}
        body = orjson.dumps({"model": "echo", "messages": [message], "session_id": sid})
        path = "/v1/chat/completions"
        return sid, content, encode_request("POST", self.spec.hostport, path, body)

    async def fill(self, turns: int) -> dict[str, Any]:
        """Closed loop: ``turns`` chat turns on every session (``sessions`` and
        ``ws_sessions``), ``connections`` of them back to back. Their rate is the
        capacity the soak's rate is a share of; the histories they leave are full of
        turns shaped like the soak's own, so its memory starts at its steady state."""
        spec, kind = self.spec, _Kind()
        every = spec.sessions + spec.ws_sessions
        total = turns * len(every)
        numbers = itertools.count()

        async def one() -> None:
            conn = await _connect(spec)
            try:
                while (n := next(numbers)) < total:
                    payload = self.chat_request(n, every[n % len(every)])[2]
                    sent = time.perf_counter()
                    try:
                        status = await asyncio.wait_for(conn.request(payload), REQUEST_LIMIT)
                    except (OSError, ValueError, TimeoutError) as exc:
                        kind.error(type(exc).__name__)
                        conn.close()
                        conn = await _connect(spec)
                        continue
                    if status != 200:
                        kind.error(f"status {status}")
                        continue
                    kind.latencies.append(time.perf_counter() - sent)
            finally:
                conn.close()

        cpu0, t0 = cpu_now(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(min(spec.connections, total))))
        elapsed = time.perf_counter() - t0
        out = kind.summary(elapsed)
        return {
            "requests": out["measured"],
            "rps": out["per_s"],
            "duration_s": round(elapsed, 3),
            "latency_ms": out["latency_ms"],
            "errors": out["errors"],
            "cpu_s": round(cpu_now() - cpu0, 3),
        }

    async def run_chat(self) -> None:
        spec = self.spec
        idle: asyncio.Queue[_Conn] = asyncio.Queue()
        opened = [0]
        loop = asyncio.get_running_loop()

        async def fire(n: int, intended: float) -> None:
            sid, content, payload = self.chat_request(n)
            if idle.empty() and opened[0] < spec.connections:
                opened[0] += 1
                try:
                    conn = await _connect(spec)
                except OSError as exc:
                    opened[0] -= 1
                    self.chat.error(type(exc).__name__)
                    return
            else:
                conn = await idle.get()
            self.chat.sent += 1
            try:
                status = await asyncio.wait_for(conn.request(payload), REQUEST_LIMIT)
            except (OSError, ValueError, TimeoutError) as exc:
                opened[0] -= 1
                conn.close()
                self.chat.error("timeout" if isinstance(exc, TimeoutError) else type(exc).__name__)
                return
            end = time.perf_counter()
            if status != 200:
                idle.put_nowait(conn)
                self.chat.error(f"status {status}")
                return
            reply = conn.body()
            idle.put_nowait(conn)
            self.chat.acked += 1
            self.histories[sid].pending.append(_Ack(int(reply["seq"]), content))
            self.record(self.chat, intended, end)

        tasks: set[asyncio.Task[None]] = set()
        count = int(spec.rate * (spec.warmup + spec.duration))
        for n in range(count):
            intended = self.t0 + n / spec.rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = loop.create_task(fire(n, intended))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, late = await asyncio.wait(set(tasks), timeout=DRAIN_LIMIT)
            for task in late:
                task.cancel()
                self.chat.error("unfinished")
        while not idle.empty():
            idle.get_nowait().close()

    # -- WebSocket turns -----------------------------------------------------------------

    async def run_ws(self, session: aiohttp.ClientSession, index: int) -> None:
        spec = self.spec
        url = f"http://{spec.hostport}/v1/ws"
        period = 1.0 / spec.ws_rate
        start = self.t0 + index * period / max(spec.ws, 1)  # spread the connections' turns
        end = self.m1
        sid = spec.ws_sessions[index] if index < len(spec.ws_sessions) else None
        ws: aiohttp.ClientWebSocketResponse | None = None
        for turn in itertools.count():
            intended = start + turn * period
            if intended >= end:
                break
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if ws is None or ws.closed:
                    ws, sid = await self._ws_open(session, url, sid)
                self.ws.sent += 1
                seq = await asyncio.wait_for(
                    self._ws_turn(ws, turn, f"ws {index} {turn}"), REQUEST_LIMIT
                )
            except (OSError, aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                self.ws.error("timeout" if isinstance(exc, TimeoutError) else type(exc).__name__)
                if ws is not None:
                    await ws.close()
                continue
            except _Refused as exc:
                self.ws.error(f"error {exc}")
                continue
            assert sid is not None
            self.ws.acked += 1
            self.histories[sid].pending.append(_Ack(seq, f"ws {index} {turn}"))
            self.record(self.ws, intended, time.perf_counter())
        if ws is not None:
            await ws.close()

    async def _ws_open(
        self, session: aiohttp.ClientSession, url: str, sid: str | None
    ) -> tuple[aiohttp.ClientWebSocketResponse, str]:
        ws = await session.ws_connect(url, max_msg_size=0)
        hello = {"type": "hello"} if sid is None else {"type": "hello", "session_id": sid}
        await ws.send_str(orjson.dumps(hello).decode())
        frame = await _ws_frame(ws)
        if frame.get("type") != "ready":
            await ws.close()
            raise _Refused(str(frame.get("code")))
        sid = str(frame["session_id"])
        if sid not in self.histories:
            self.histories[sid] = _History(last_read=int(frame["seq"]))
        return ws, sid

    async def _ws_turn(self, ws: aiohttp.ClientWebSocketResponse, turn: int, content: str) -> int:
        frame = {"type": "message", "id": turn, "content": content}
        await ws.send_str(orjson.dumps(frame).decode())
        while True:
            frame = await _ws_frame(ws)
            kind = frame.get("type")
            if kind == "done" and frame.get("id") == turn:
                return int(frame["seq"])
            if kind == "error":
                raise _Refused(str(frame.get("code")))

    # -- background responses ------------------------------------------------------------

    async def run_bg(self) -> None:
        spec = self.spec
        conn: _Conn | None = None
        period = 1.0 / spec.bg_rate
        for n in itertools.count():
            intended = self.t0 + n * period
            if intended >= self.m1:
                break
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = orjson.dumps({"model": "echo", "input": f"bg {n}", "background": True})
            payload = encode_request("POST", spec.hostport, "/v1/responses", body)
            self.bg.sent += 1
            try:
                if conn is None or conn.closed:
                    conn = await _connect(spec)
                status = await asyncio.wait_for(conn.request(payload), REQUEST_LIMIT)
            except (OSError, ValueError, TimeoutError) as exc:
                self.bg.error("timeout" if isinstance(exc, TimeoutError) else type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if status != 200:
                self.bg.error(f"status {status}")
                continue
            self.bg.acked += 1
            self.responses.append(str(conn.body()["id"]))
            self.record(self.bg, intended, time.perf_counter())
        if conn is not None:
            conn.close()

    async def settle_responses(self) -> dict[str, Any]:
        """Wait until every accepted background response has a terminal status."""
        conn = await _connect(self.spec)
        statuses: dict[str, str] = {}
        todo = list(self.responses)
        deadline = time.perf_counter() + self.spec.settle
        try:
            while todo:
                for rid in todo:
                    payload = encode_request("GET", self.spec.hostport, f"/v1/responses/{rid}")
                    status = await asyncio.wait_for(conn.request(payload), REQUEST_LIMIT)
                    ok = status == 200
                    statuses[rid] = str(conn.body()["status"]) if ok else f"http {status}"
                todo = [rid for rid in todo if statuses[rid] not in TERMINAL]
                if not todo or time.perf_counter() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            conn.close()
        by_status: dict[str, int] = {}
        for status in statuses.values():
            by_status[status] = by_status.get(status, 0) + 1
        return {
            "accepted": len(self.responses),
            "by_status": by_status,
            "not_terminal": sum(1 for s in statuses.values() if s not in TERMINAL),
        }

    # -- the reader ----------------------------------------------------------------------

    async def read_histories(self, conn: _Conn) -> _Conn:
        """Read what every session added since the last read; check acknowledgements."""
        for sid, hist in list(self.histories.items()):
            while True:
                path = f"/v1/sessions/{sid}/messages?after={hist.last_read}&limit=1000"
                payload = encode_request("GET", self.spec.hostport, path)
                if conn.closed:
                    conn = await _connect(self.spec)
                status = await asyncio.wait_for(conn.request(payload), REQUEST_LIMIT)
                if status != 200:
                    raise RuntimeError(f"reading {path} answered {status}")
                page = conn.body()
                now = time.perf_counter()
                for message in page["data"]:
                    seq = int(message["seq"])
                    if seq != hist.last_read + 1:  # trimmed (max_messages) before it was read
                        hist.gaps.append((hist.last_read + 1, seq - 1))
                    hist.seen[seq] = (message.get("role", ""), _text(message), now)
                    hist.last_read = seq
                self.verify["messages_read"] += len(page["data"])
                if not page.get("has_more"):
                    break
            self._check(hist, now)
        return conn

    def _check(self, hist: _History, now: float) -> None:
        waiting = []
        for ack in hist.pending:
            if ack.seq > hist.last_read:
                waiting.append(ack)
                continue
            user, reply = hist.seen.get(ack.seq - 1), hist.seen.get(ack.seq)
            if user and reply and user[:2] == ("user", ack.content) and reply[0] == "assistant":
                self.verify["verified"] += 1
                del hist.seen[ack.seq - 1], hist.seen[ack.seq]
            elif any(ack.seq - 1 <= hi and ack.seq >= lo for lo, hi in hist.gaps):
                self.verify["unverified"] += 1
            else:
                self.verify["lost"] += 1
                if len(self.lost_examples) < 20:
                    self.lost_examples.append(
                        {"seq": ack.seq, "content": ack.content, "found": [user, reply]}
                    )
        hist.pending = waiting
        # Messages of turns never acknowledged (errors) need no check: forget them.
        for seq in [s for s, (_, _, t) in hist.seen.items() if now - t > PRUNE_AFTER]:
            del hist.seen[seq]

    async def run_reader(self) -> None:
        conn = await _connect(self.spec)
        try:
            while not self.stopping:
                await asyncio.sleep(self.spec.check_every)
                conn = await self.read_histories(conn)
        finally:
            conn.close()

    # -- the whole run -------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        loop = asyncio.get_running_loop()
        self.t0 = time.perf_counter() + 0.05
        self.m0 = self.t0 + spec.warmup
        self.m1 = self.m0 + spec.duration
        cpu = [0.0, 0.0]  # the driver's CPU seconds at the window's start and end

        def start() -> None:
            cpu[0] = cpu_now()
            _say("measure-start")

        loop.call_at(loop.time() + (self.m0 - time.perf_counter()), start)
        reader = loop.create_task(self.run_reader())
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(
                self.run_chat(),
                self.run_bg(),
                *(self.run_ws(session, i) for i in range(spec.ws)),
            )
        cpu[1] = cpu_now()
        _say("measure-end")
        elapsed = max(time.perf_counter() - self.m0, 1e-9)
        self.stopping = True
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        background = await self.settle_responses()
        conn = await _connect(spec)
        try:
            await self.read_histories(conn)
        finally:
            conn.close()
        waiting = sum(len(h.pending) for h in self.histories.values())
        self.verify["lost"] += waiting  # acknowledged, yet past the end of the history
        gaps = [g for h in self.histories.values() for g in h.gaps]
        return {
            "rate": spec.rate,
            "duration_s": spec.duration,
            "warmup_s": spec.warmup,
            "sessions": len(spec.sessions),
            "ws_connections": spec.ws,
            "ws_rate_per_connection": spec.ws_rate,
            "bg_rate": spec.bg_rate,
            "chat": self.chat.summary(spec.duration, spec.window),
            "ws": self.ws.summary(spec.duration, spec.window),
            "background": {**self.bg.summary(spec.duration), **background},
            "history": {
                **self.verify,
                "acknowledged": self.chat.acked + self.ws.acked,
                "trimmed_unread_stretches": len(gaps),
                "lost_examples": self.lost_examples,
            },
            "elapsed_s": round(elapsed, 3),
            "cpu_s": round(cpu[1] - cpu[0], 3),
        }


class _Refused(Exception):
    """An error frame, or a hello that got no ``ready``."""


async def _ws_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive()
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise ConnectionError(f"connection ended: {msg.type.name}")
    frame: dict[str, Any] = orjson.loads(msg.data)
    return frame


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else json.dumps(content)


def _say(line: str) -> None:
    print(line, flush=True)


async def run_mix(spec: MixSpec, fill: int = 0) -> dict[str, Any]:
    """The soak, or with ``fill`` > 0 only filling the sessions (closed loop)."""
    mix = Mix(spec)
    return await (mix.fill(fill) if fill > 0 else mix.run())


def _loopback(host: str) -> str:
    if host in ("localhost", "127.0.0.1") or host.startswith("127."):
        return host
    raise SystemExit(f"refusing {host}: the load generator only targets loopback addresses")


def _ids(path: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def parse_args(argv: Iterable[str] | None = None) -> tuple[MixSpec, Path | None, float]:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen.mixed", description=__doc__)
    parser.add_argument("--url", required=True, help="agentd's base URL")
    parser.add_argument("--sessions", type=Path, required=True, help="chat sessions' ids")
    parser.add_argument("--ws-sessions", type=Path, default=None, help="WebSockets' sessions")
    parser.add_argument("--rate", type=float, required=True, help="chat turns/s")
    parser.add_argument("--duration", type=float, required=True, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--ws", type=int, default=20, help="WebSocket connections")
    parser.add_argument("--ws-rate", type=float, default=2.0, help="turns/s per connection")
    parser.add_argument("--bg-rate", type=float, default=1.0, help="background responses/s")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per p99 window")
    parser.add_argument("--check-every", type=float, default=5.0, help="history read period")
    parser.add_argument("--settle", type=float, default=60.0)
    parser.add_argument(
        "--fill",
        type=int,
        default=0,
        metavar="TURNS",
        help="only run this many turns on every session, --connections at a time (closed loop)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(None if argv is None else list(argv))
    url = urlsplit(args.url)
    if args.rate <= 0 or args.ws_rate <= 0 or args.bg_rate <= 0 or args.duration <= 0:
        parser.error("rates and the duration must be positive")
    spec = MixSpec(
        host=_loopback(url.hostname or "127.0.0.1"),
        port=url.port or 80,
        sessions=_ids(args.sessions),
        ws_sessions=_ids(args.ws_sessions) if args.ws_sessions else (),
        rate=args.rate,
        duration=min(args.duration, 24 * 3600.0),
        warmup=args.warmup,
        connections=args.connections,
        ws=args.ws,
        ws_rate=args.ws_rate,
        bg_rate=args.bg_rate,
        window=args.window,
        check_every=args.check_every,
        settle=args.settle,
    )
    return spec, args.out, args.fill


def main(argv: Iterable[str] | None = None) -> None:
    spec, out, fill = parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(run_mix(spec, fill))
    except ImportError:  # pragma: no cover - uvloop is an agentd dependency
        result = asyncio.run(run_mix(spec, fill))
    text = json.dumps(result, indent=1)
    if out is None:
        print(text, flush=True)
    else:
        out.write_text(text)


if __name__ == "__main__":
    main()
