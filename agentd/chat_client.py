"""``agentd chat``: a terminal client of the WebSocket protocol (docs/protocol.md).

Reads lines from standard input, sends each as a message, prints the reply as it
streams, and prints what other connections add to the session. When the connection
drops it reconnects and resumes from the last sequence number it saw, so nothing is
missed or printed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any, TextIO

import aiohttp
import orjson

__all__ = ("run_chat",)

RECONNECT_MAX = 5.0


class ChatClient:
    def __init__(self, url: str, agent: str | None, session_id: str | None, out: TextIO) -> None:
        self.url = url.rstrip("/") + "/v1/ws" if not url.endswith("/v1/ws") else url
        self.agent = agent
        self.session_id = session_id
        self.last_seq: int | None = None
        self.out = out
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.next_id = 1
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.connected = asyncio.Event()

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    async def connect_forever(self, http: aiohttp.ClientSession) -> None:
        delay = 0.2
        while True:
            try:
                async with http.ws_connect(self.url, heartbeat=30) as ws:
                    hello: dict[str, Any] = {"type": "hello"}
                    if self.session_id:
                        hello["session_id"] = self.session_id
                    if self.agent:
                        hello["agent"] = self.agent
                    if self.last_seq is not None:
                        hello["after"] = self.last_seq
                    await ws.send_str(orjson.dumps(hello).decode())
                    self.ws = ws
                    delay = 0.2
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        self.on_frame(orjson.loads(msg.data))
            except aiohttp.ClientError as exc:
                self.write(f"\n[connection failed: {exc}; retrying]\n")
            self.ws = None
            self.connected.clear()
            for waiter in self.pending.values():  # the turn's reply comes back as events
                if not waiter.done():
                    waiter.set_result(None)
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    def on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ready":
            if self.session_id is None:
                self.write(f"[session {frame['session_id']}]\n")
            self.session_id = frame["session_id"]
            if self.last_seq is None:
                self.last_seq = frame["seq"]
            self.connected.set()
        elif kind == "delta":
            self.write(frame["content"])
        elif kind == "done":
            self.write("\n")
            if frame.get("seq") is not None:
                self.last_seq = frame["seq"]
            self._settle(frame.get("id"))
        elif kind == "event" and "seq" in frame:
            message = frame["message"]
            self.last_seq = frame["seq"]
            self.write(f"[{message['role']}] {message.get('content')}\n")
        elif kind == "error":
            self.write(f"\n[error {frame.get('code')}: {frame.get('message')}]\n")
            self._settle(frame.get("id"))
        elif kind == "cancelled":
            self._settle(frame.get("id"))

    def _settle(self, frame_id: Any) -> None:
        waiter = self.pending.pop(frame_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def say(self, text: str) -> None:
        await self.connected.wait()
        assert self.ws is not None
        frame_id = self.next_id
        self.next_id += 1
        waiter = asyncio.get_running_loop().create_future()
        self.pending[frame_id] = waiter
        frame = {"type": "message", "id": frame_id, "content": text}
        await self.ws.send_str(orjson.dumps(frame).decode())
        await waiter


async def run_chat(url: str, agent: str | None, session_id: str | None) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    client = ChatClient(url, agent, session_id, sys.stdout)
    async with aiohttp.ClientSession() as http:
        connection = asyncio.create_task(client.connect_forever(http))
        try:
            while line := await reader.readline():
                text = line.decode().rstrip("\n")
                if text:
                    await client.say(text)
        finally:
            connection.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connection
    return 0
