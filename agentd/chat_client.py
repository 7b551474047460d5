"""``agentd chat``: a terminal client of the WebSocket protocol (docs/protocol.md).

Reads lines from standard input after a ``you>`` prompt, sends each as a message and
prints the reply as it streams after the agent's name; what other connections add to
the session is printed with its speaker. ``--session`` first shows the session's last
messages. Ctrl-C cancels the running turn; a second Ctrl-C (or one with no turn
running) quits. When the connection drops it reconnects and resumes from the last
sequence number it saw, so nothing is missed or printed twice.

An error that answers the ``hello`` (an unknown agent or session, or a session that is
gone after a standalone server restarted) ends the client with the error and a non-zero
exit: typing on would go nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any, TextIO

import aiohttp
import orjson

__all__ = ("EXIT_ERROR", "EXIT_INTERRUPTED", "HISTORY", "run_chat")

RECONNECT_MAX = 5.0
# Messages of the session shown when resuming it with --session.
HISTORY = 10
PROMPT = "you> "
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C


class ChatError(Exception):
    """Chatting cannot go on; the message says why."""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts: keep their text
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class ChatClient:
    def __init__(
        self, url: str, agent: str | None, session_id: str | None, out: TextIO, echo_input: bool
    ) -> None:
        base = url.rstrip("/")
        self.base = base.removesuffix("/v1/ws")
        self.ws_url = self.base + "/v1/ws"
        self.agent = agent
        self.label = agent or "assistant"
        self.session_id = session_id
        self.last_seq: int | None = None
        self.out = out
        self.echo_input = echo_input  # stdin is not a terminal: show what was sent
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.streamed: set[int] = set()  # turns whose reply has started printing
        self.next_id = 1
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.ever_connected = False
        self.cancelling = False
        self.at_prompt = False
        self.quit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.sending: set[asyncio.Future[None]] = set()  # cancel frames on their way

    # -- output -----------------------------------------------------------------------

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def prompt(self) -> None:
        if not self.at_prompt:
            self.at_prompt = True
            self.write(PROMPT)

    def line(self, text: str) -> None:
        """A whole line of its own, leaving the prompt where it was."""
        self.write(("\n" if self.at_prompt else "") + text + "\n")
        if self.at_prompt:
            self.write(PROMPT)

    def speaker(self, role: str) -> str:
        return self.label if role == "assistant" else role

    # -- history ----------------------------------------------------------------------

    async def show_history(self, http: aiohttp.ClientSession) -> None:
        """Print the session's last messages; the WebSocket then resumes after them."""
        url = f"{self.base}/v1/sessions/{self.session_id}/messages"
        try:
            async with http.get(url, params={"limit": str(HISTORY)}) as resp:
                body = orjson.loads(await resp.read())
                status = resp.status
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise ChatError(
                f"cannot read session {self.session_id} at {self.base}: {exc}"
            ) from None
        if status != 200:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ChatError(f"{error.get('code', status)}: {error.get('message', body)}")
        messages = body["data"]
        more = " (earlier ones: GET /v1/sessions/ID/messages)" if body.get("has_more") else ""
        self.write(f"[session {self.session_id}: {len(messages)} recent message(s){more}]\n")
        for message in messages:
            self.write(f"{self.speaker(message['role'])}> {_text(message.get('content'))}\n")
        self.last_seq = messages[-1]["seq"] if messages else 0

    # -- the connection -----------------------------------------------------------------

    async def connect_forever(self, http: aiohttp.ClientSession) -> None:
        """Keep a connection; returns only by raising :class:`ChatError`."""
        delay = 0.2
        while True:
            try:
                async with http.ws_connect(self.ws_url, heartbeat=30) as ws:
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
                if not self.ever_connected:
                    raise ChatError(f"cannot connect to {self.ws_url}: {exc}") from None
                self.line(f"[connection failed: {exc}; retrying]")
            else:
                self.line("[connection lost; reconnecting]")
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
            self.ever_connected = True
            self.connected.set()
            if not self.pending:
                self.prompt()
        elif kind == "delta":
            self.reply(frame.get("id"), frame["content"])
        elif kind == "done":
            frame_id = frame.get("id")
            if frame_id not in self.streamed:  # nothing streamed: show the stored reply
                self.reply(frame_id, _text(frame.get("message", {}).get("content")))
            self.write("\n")
            if frame.get("seq") is not None:
                self.last_seq = frame["seq"]
            self._settle(frame_id)
        elif kind == "event" and "seq" in frame:
            message = frame["message"]
            self.last_seq = frame["seq"]
            self.line(f"{self.speaker(message['role'])}> {_text(message.get('content'))}")
        elif kind == "error":
            if "id" not in frame and not self.connected.is_set():
                # The hello was refused: this session cannot be chatted in.
                raise ChatError(f"{frame.get('code')}: {frame.get('message')}")
            self.line(f"\n[error {frame.get('code')}: {frame.get('message')}]")
            self._settle(frame.get("id"))
        elif kind == "cancelled":
            self.line("[cancelled]")
            self._settle(frame.get("id"))

    def reply(self, frame_id: Any, text: str) -> None:
        if frame_id not in self.streamed:
            self.streamed.add(frame_id)
            self.write(f"{self.label}> ")
        self.write(text)

    def _settle(self, frame_id: Any) -> None:
        self.streamed.discard(frame_id)
        waiter = self.pending.pop(frame_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the person at the keyboard -------------------------------------------------------

    async def read_input(self, reader: asyncio.StreamReader) -> None:
        """Send each line as a message, one turn at a time, until end of input."""
        # The first prompt comes with the session: read nothing before it is shown.
        # (Later, end of input quits even while reconnecting.)
        await self.connected.wait()
        while line := await reader.readline():
            text = line.decode().rstrip("\n")
            if self.echo_input:
                self.write(text + "\n")
            self.at_prompt = False
            if text:
                await self.say(text)
            self.prompt()

    async def say(self, text: str) -> None:
        await self.connected.wait()
        assert self.ws is not None
        frame_id = self.next_id
        self.next_id += 1
        waiter = asyncio.get_running_loop().create_future()
        self.pending[frame_id] = waiter
        frame = {"type": "message", "id": frame_id, "content": text}
        await self.ws.send_str(orjson.dumps(frame).decode())
        try:
            await waiter
        finally:
            self.cancelling = False

    def interrupt(self) -> None:
        """Ctrl-C: cancel the running turn; with none (or a second time), quit."""
        ws = self.ws
        if self.pending and not self.cancelling and ws is not None and not ws.closed:
            self.cancelling = True
            self.write("\n[cancelling; Ctrl-C again to quit]\n")
            for frame_id in self.pending:
                frame = orjson.dumps({"type": "cancel", "id": frame_id}).decode()
                sent = asyncio.ensure_future(ws.send_str(frame))
                self.sending.add(sent)
                sent.add_done_callback(self.sending.discard)
            return
        self.write("\n")
        self.at_prompt = False
        if not self.quit.done():
            self.quit.set_result(EXIT_INTERRUPTED)


async def run_chat(url: str, agent: str | None, session_id: str | None) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    client = ChatClient(url, agent, session_id, sys.stdout, echo_input=not sys.stdin.isatty())
    loop.add_signal_handler(signal.SIGINT, client.interrupt)
    async with aiohttp.ClientSession() as http:
        tasks: list[asyncio.Future[Any]] = []
        try:
            if session_id is not None:
                await client.show_history(http)
            tasks = [
                asyncio.ensure_future(client.connect_forever(http)),
                asyncio.ensure_future(client.read_input(reader)),
                client.quit,
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finished = done.pop()
            return 0 if finished is tasks[1] else finished.result()
        except ChatError as exc:
            client.write("\n" if client.at_prompt else "")
            print(f"agentd chat: {exc}", file=sys.stderr, flush=True)
            return EXIT_ERROR
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, ChatError):
                    await task
