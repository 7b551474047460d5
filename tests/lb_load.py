"""The mixed load the load-balancer tests run through a balancer (tests/lb.py): chat
turns on sessions, streamed turns, WebSocket clients that resume with ``hello {after}``
whenever their connection drops, and a background job; every outcome is recorded, and
every acknowledged reply then checked against the store."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .waiting import wait_until


@dataclass
class Outcome:
    kind: str  # chat, stream, ws, job
    started: float
    ended: float
    ok: bool
    detail: str = ""


@dataclass
class Acked:
    """A reply the server acknowledged (200, or a WebSocket ``done``): it must be stored."""

    sid: str
    seq: int
    content: str


@dataclass
class WsClient:
    sid: str = ""
    seen: list[int] = field(default_factory=list)  # seqs heard, in order
    replies: set[str] = field(default_factory=set)  # assistant texts heard as events
    dropped: list[tuple[str, float]] = field(default_factory=list)  # turns cut off
    reconnects: int = 0


TIMEOUT = aiohttp.ClientTimeout(total=40)


class ConnectionLost(Exception):
    pass


class Load:
    """Chat turns on sessions (plain and streamed, alternately), WebSocket clients
    running turns and resuming with ``hello {after}`` whenever their connection drops,
    and one background job: all through the balancer at ``url``, until :meth:`finish`."""

    def __init__(
        self, url: str, chat_clients: int = 3, ws_clients: int = 3, resend_unstored: bool = False
    ) -> None:
        self.url = url
        # A WebSocket turn cut off and never stored is sent again (as a client does after
        # a drain's close) rather than counted as failed; ``resent`` counts them.
        self.resend_unstored = resend_unstored
        self.resent = 0
        self.outcomes: list[Outcome] = []
        self.acked: list[Acked] = []
        self.running = 0  # requests and turns in flight now
        self.ws = [WsClient() for _ in range(ws_clients)]
        self.job_id = ""
        self.job_words = " ".join(f"w{i}" for i in range(60))  # 6 s on the slow echo
        self.job_result: dict[str, Any] = {}
        self._failed_sessions: dict[str, float] = {}  # session: when its first turn failed
        self._answered: list[tuple[str, float]] = []  # (session, when) of each answer
        self._stop = asyncio.Event()
        self._http = aiohttp.ClientSession(timeout=TIMEOUT)
        self._tasks = [asyncio.create_task(self._chat(n)) for n in range(chat_clients)]
        self._tasks += [asyncio.create_task(self._ws(n, c)) for n, c in enumerate(self.ws)]

    def add_ws_client(self) -> None:
        me = WsClient()
        self.ws.append(me)
        self._tasks.append(asyncio.create_task(self._ws(len(self.ws) - 1, me)))

    # ---- figures

    def count(self, kind: str | None = None, ok: bool | None = None) -> int:
        return sum(
            1
            for o in self.outcomes
            if (kind is None or o.kind == kind) and (ok is None or o.ok == ok)
        )

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def recovery_s(self, since: float) -> float:
        """How long after ``since`` the last session whose turn failed (after ``since``)
        answered a turn again."""
        worst = 0.0
        for sid, failed_at in self._failed_sessions.items():
            if failed_at < since:
                continue
            ok = [t for s, t in self._answered if s == sid and t > failed_at]
            assert ok, f"session {sid} never answered again after its turn failed"
            worst = max(worst, min(ok) - since)
        return worst

    # ---- single turns the scenarios send besides the load

    async def new_session(self) -> str:
        async with self._http.post(self.url + "/v1/sessions", json={}) as r:
            assert r.status in (200, 201), await r.text()
            return str(orjson.loads(await r.read())["id"])

    async def slow_turn(self, url: str, sid: str) -> bool:
        """A turn of the slow agent (6 s) at ``url``: True if it was answered."""
        body = {"model": "slow", "messages": [{"role": "user", "content": self.job_words}]}
        async with self._http.post(
            url + "/v1/chat/completions", json=body, headers={"X-Session-Id": sid}
        ) as r:
            await r.read()
            return r.status == 200

    async def turn_answered_s(self, sid: str, since: float) -> float:
        """Send a turn on the session through the balancer (again, while it fails) and
        say how long after ``since`` it was answered."""
        while True:
            try:
                await self._plain(sid, "are you there?")
            except (AssertionError, aiohttp.ClientError) as exc:
                if time.monotonic() - since > 30:
                    raise AssertionError(f"session {sid} still refuses turns: {exc}") from None
                await asyncio.sleep(0.05)  # the balancer answered at once: not too hot a loop
                continue
            return time.monotonic() - since

    @staticmethod
    def job_text(job: dict[str, Any]) -> str:
        return "".join(
            part["text"]
            for item in job.get("output") or ()
            for part in item.get("content") or ()
            if part.get("type") == "output_text"
        )

    # ---- chat clients

    async def _chat(self, n: int) -> None:
        sid = await self.new_session()
        turn = 0
        while not self._stop.is_set():
            turn += 1
            content = f"chat {n} turn {turn} says hello"
            stream = turn % 2 == 0
            kind = "stream" if stream else "chat"
            started = time.monotonic()
            self.running += 1
            try:
                seq = await (self._streamed if stream else self._plain)(sid, content)
            except Exception as exc:
                ended = time.monotonic()
                self.outcomes.append(Outcome(kind, started, ended, False, repr(exc)[:300]))
                self._failed_sessions.setdefault(sid, ended)
            else:
                ended = time.monotonic()
                self.outcomes.append(Outcome(kind, started, ended, True))
                self.acked.append(Acked(sid, seq, content))
                self._answered.append((sid, ended))
            finally:
                self.running -= 1

    def _body(self, content: str, stream: bool) -> dict[str, Any]:
        return {
            "model": "echo",
            "stream": stream,
            "messages": [{"role": "user", "content": content}],
        }

    async def _plain(self, sid: str, content: str) -> int:
        headers = {"X-Session-Id": sid}
        async with self._http.post(
            self.url + "/v1/chat/completions", json=self._body(content, False), headers=headers
        ) as r:
            body = await r.read()
            if r.status != 200:
                raise AssertionError(f"{r.status} {body[:200]!r}")
            reply = orjson.loads(body)
        assert reply["choices"][0]["message"]["content"] == content, reply
        return int(reply["seq"])

    async def _streamed(self, sid: str, content: str) -> int:
        headers = {"X-Session-Id": sid}
        text, seq, done = [], None, False
        async with self._http.post(
            self.url + "/v1/chat/completions", json=self._body(content, True), headers=headers
        ) as r:
            if r.status != 200:
                raise AssertionError(f"{r.status} {(await r.read())[:200]!r}")
            async for line in r.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = orjson.loads(data)
                if "error" in chunk:
                    raise AssertionError(f"stream error {chunk['error']}")
                for choice in chunk.get("choices", ()):
                    text.append(choice["delta"].get("content") or "")
                if "seq" in chunk:
                    seq = chunk["seq"]
        if not done or seq is None:
            raise ConnectionLost("the stream ended before its end")
        assert "".join(text) == content
        return int(seq)

    # ---- WebSocket clients

    async def _ws(self, n: int, me: WsClient) -> None:
        turn = 0
        while not self._stop.is_set():
            pending: tuple[str, float] | None = None
            try:
                async with self._http.ws_connect(
                    self.url + "/v1/ws", headers={"X-Session-Id": me.sid} if me.sid else {}
                ) as ws:
                    await self._hello(ws, me)
                    while not self._stop.is_set():
                        turn += 1
                        content = f"ws {n} turn {turn} says hello"
                        pending = (content, time.monotonic())
                        self.running += 1
                        try:
                            await ws.send_json({"type": "message", "id": turn, "content": content})
                            done = await self._until_done(ws, me, turn)
                        finally:
                            self.running -= 1
                        if done.get("type") == "done":
                            assert done["message"]["content"] == content, done
                            seq = int(done["seq"])
                            me.seen += [seq - 1, seq]
                            self.acked.append(Acked(me.sid, seq, content))
                            self.outcomes.append(Outcome("ws", pending[1], time.monotonic(), True))
                        else:
                            self.outcomes.append(
                                Outcome("ws", pending[1], time.monotonic(), False, repr(done))
                            )
                        pending = None
            except (ConnectionLost, aiohttp.ClientError, OSError, TimeoutError):
                if pending is not None:
                    me.dropped.append(pending)
                if me.sid:
                    me.reconnects += 1
                # Some instance is always up: retry the balancer at once (a short pause
                # spares the CPU while it answers 502 for a moment).
                await asyncio.sleep(0.05)

    async def _hello(self, ws: aiohttp.ClientWebSocketResponse, me: WsClient) -> int:
        """Bind (or resume) the client's session; the last seq of the session."""
        hello: dict[str, Any] = {"type": "hello"}
        if me.sid:
            hello |= {"session_id": me.sid, "after": max(me.seen, default=0)}
        await ws.send_json(hello)
        ready = await self._frame(ws, me)
        while ready.get("type") != "ready":
            if ready.get("type") == "error":
                raise AssertionError(f"hello refused: {ready}")
            ready = await self._frame(ws, me)
        me.sid = ready["session_id"]
        return int(ready["seq"])

    async def _frame(self, ws: aiohttp.ClientWebSocketResponse, me: WsClient) -> dict[str, Any]:
        """The next frame; events are noted on the way (their seqs, the replies)."""
        while True:
            msg = await ws.receive(timeout=40)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionLost(f"websocket {msg.type.name} {msg.data} {msg.extra}")
            frame = orjson.loads(msg.data)
            if frame["type"] == "event" and "seq" in frame:
                me.seen.append(int(frame["seq"]))
                if frame["message"].get("role") == "assistant":
                    me.replies.add(frame["message"]["content"])
                continue
            return frame

    async def _until_done(
        self, ws: aiohttp.ClientWebSocketResponse, me: WsClient, turn: int | str
    ) -> dict[str, Any]:
        while True:
            frame = await self._frame(ws, me)
            if frame["type"] in ("done", "error") and frame.get("id") == turn:
                return frame

    async def sync_ws(self) -> None:
        """Resume every WebSocket client once more and hear everything stored since what
        it last saw (turns cut off by a drain are stored and arrive this way)."""
        for me in self.ws:
            if not me.sid:
                continue
            async with self._http.ws_connect(self.url + "/v1/ws") as ws:
                last = await self._hello(ws, me)
                while max(me.seen, default=0) < last:
                    await self._frame(ws, me)
            for content, started in me.dropped:
                if content in me.replies:
                    continue
                if not self.resend_unstored:  # lost with its instance: a failed turn
                    self.outcomes.append(
                        Outcome("ws", started, started, False, "cut off, never stored")
                    )
                    continue
                # A message that crossed the server's 1001 close was never received
                # (docs/protocol.md): not stored, so a client sends it again.
                self.resent += 1
                async with self._http.ws_connect(self.url + "/v1/ws") as ws:
                    await self._hello(ws, me)
                    await ws.send_json({"type": "message", "id": "again", "content": content})
                    done = await self._until_done(ws, me, "again")
                ok = done.get("type") == "done"
                if ok:
                    # As for any turn: its own messages come in the done, not as events
                    # (without this, verify() found them stored but never heard).
                    seq = int(done["seq"])
                    me.seen += [seq - 1, seq]
                    self.acked.append(Acked(me.sid, seq, content))
                self.outcomes.append(Outcome("ws", started, time.monotonic(), ok, repr(done)))

    # ---- the background job

    async def start_job(self) -> str:
        body = {"model": "slow", "input": self.job_words, "background": True}
        async with self._http.post(self.url + "/v1/responses", json=body) as r:
            assert r.status == 200, await r.text()
            self.job_id = orjson.loads(await r.read())["id"]
        return self.job_id

    async def job_status(self) -> dict[str, Any]:
        async with self._http.get(f"{self.url}/v1/responses/{self.job_id}") as r:
            assert r.status == 200, await r.text()
            return orjson.loads(await r.read())

    async def wait_job(self, limit: float = 45.0) -> dict[str, Any]:
        async def ended() -> dict[str, Any] | None:
            found = await self.job_status()
            return found if found["status"] not in ("queued", "in_progress") else None

        self.job_result = await wait_until(ended, limit, "the background job to end", 0.1)
        return self.job_result

    # ---- the end

    async def finish(self) -> None:
        """Stop the clients (each ends its turn in flight) and resume the WebSockets."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.sync_ws()

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.close()

    async def verify(self) -> int:
        """Every acknowledged reply is in the store at its seq; every WebSocket client
        heard each of its session's messages exactly once. Returns the messages checked."""
        by_sid: dict[str, dict[int, dict[str, Any]]] = {}
        for sid in {a.sid for a in self.acked} | {c.sid for c in self.ws if c.sid}:
            url = f"{self.url}/v1/sessions/{sid}/messages?limit=1000&order=asc"
            async with self._http.get(url) as r:
                assert r.status == 200, await r.text()
                by_sid[sid] = {m["seq"]: m for m in orjson.loads(await r.read())["data"]}
        for a in self.acked:
            stored = by_sid[a.sid].get(a.seq)
            assert stored is not None, f"acknowledged reply {a} is not in the store"
            assert stored["role"] == "assistant" and stored["content"] == a.content, stored
            user = by_sid[a.sid].get(a.seq - 1)
            assert user is not None and user["content"] == a.content, user
        for me in self.ws:
            if not me.sid:
                continue
            assert len(me.seen) == len(set(me.seen)), f"a duplicate in {me.seen}"
            assert sorted(me.seen) == sorted(by_sid[me.sid]), (
                f"heard {sorted(me.seen)}, stored {sorted(by_sid[me.sid])}"
            )
        return len(self.acked)

    def report(self, title: str, **extra: Any) -> dict[str, Any]:
        """The figures, printed (``pytest -s`` shows them) and returned."""
        figures = {
            "requests": len(self.outcomes),
            "failed": len(self.failures()),
            **{k: self.count(k) for k in ("chat", "stream", "ws")},
            "ws_reconnects": sum(c.reconnects for c in self.ws),
            "ws_resent": self.resent,
            **extra,
        }
        print(f"\n[{title}] " + " ".join(f"{k}={v}" for k, v in figures.items()))
        for failure in self.failures():
            print(f"  failed: {failure}")
        return figures


async def traffic(load: Load, turns: int) -> None:
    """Wait until the load has answered ``turns`` more turns."""
    target = load.count(ok=True) + turns
    await wait_until(lambda: load.count(ok=True) >= target, 60, f"{turns} more turns")
