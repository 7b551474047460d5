"""A stand-in OpenAI-compatible upstream: the Chat Completions wire format on a real
loopback port, with failure modes a test sets per node.

    async with StubNode() as node:            # listening on 127.0.0.1:<free port>
        node.url                              # "http://127.0.0.1:<port>/v1"
        node.mode = Slow(first_s=0.2)         # or Normal(), Fail(503), FailMidStream(2), Hang()
        ...
        node.requests[-1].json["model"]       # every request received: headers + JSON body
        node.inflight, node.peak_inflight     # requests being answered now, and at most
        node.sent                             # content deltas streamed so far

Replies are ``"stub:" + the last user message``, one content delta per word (or
``node.reply(body)`` if set). Streaming follows OpenAI: a role delta, content deltas, a
finish chunk, a usage chunk when ``stream_options.include_usage`` (and ``send_usage``),
then ``data: [DONE]``. The stub's usage counts words, not characters, so a test can tell
it from a client's own estimate.

Tool calls, as real providers send them: when the request has ``tools`` and its last
message is a user message of ``call NAME ARGUMENTS`` lines (the echo backend's script),
or ``node.calls(body)`` returns ``[(name, arguments), ...]``, the reply is those calls
(ids ``call_stub_N``), ``finish_reason: "tool_calls"``. Unstreamed: ``message.tool_calls``
with ``content: null``. Streamed: a role delta with ``content: null``, then per call a
first piece (index, id, type, name, empty arguments) and the arguments in pieces of
``argument_piece`` characters; with ``interleave`` the calls' pieces alternate, as some
servers send parallel calls. After ``tool`` messages the reply is ``"stub:"`` and their
contents joined by ``" | "``.

``/v1/embeddings`` answers :func:`stub_vector` per input item (base64 when asked), and
``/v1/completions`` ``"stub:" + prompt`` per prompt (word by word when streamed); both
obey the modes and record their requests too.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from agentd.backends import Pool

__all__ = (
    "Fail",
    "FailMidStream",
    "Hang",
    "MakePool",
    "Mode",
    "Normal",
    "RecordedRequest",
    "Slow",
    "StartStub",
    "StubNode",
    "stub_usage",
    "stub_vector",
)


@dataclass(frozen=True)
class Normal:
    """Answer at once."""


@dataclass(frozen=True)
class Slow:
    """Wait ``first_s`` before the first content (after the headers and the role delta),
    then ``between_s`` between contents. Non-streaming replies wait ``first_s``."""

    first_s: float = 0.2
    between_s: float = 0.0


@dataclass(frozen=True)
class Fail:
    """Answer ``status`` with an OpenAI error body."""

    status: int = 500
    message: str = "the stub was told to fail"
    type: str = "server_error"
    code: str | None = None


@dataclass(frozen=True)
class FailMidStream:
    """Send ``after`` content deltas, then cut the connection (or, with ``error_event``,
    send an error object as the next event, as vLLM does, and end the body)."""

    after: int = 1
    error_event: bool = False


@dataclass(frozen=True)
class Hang:
    """Read the request and never answer (until the stub closes)."""


Mode = Normal | Slow | Fail | FailMidStream | Hang


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any


_WORD = re.compile(r"\s*\S+\s*")
_CALL = re.compile(r"\s*call\s+(\S+)(?:\s+(.*?))?\s*")
_ids = itertools.count(1)
_call_ids = itertools.count(1)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def stub_usage(messages: list[dict[str, Any]], completion_tokens: int) -> dict[str, int]:
    """The stub's usage: prompt tokens are the words of all messages."""
    prompt = sum(len(_text(m.get("content")).split()) for m in messages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def stub_vector(item: Any) -> list[float]:
    """The stub's embedding of one input item: its length, then two constants (exact in
    float32, so base64 round trips compare equal)."""
    return [float(len(item)), 0.5, -0.25]


def _error_body(message: str, type_: str, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code}})


class StubNode:
    """One upstream node. Set ``mode``, ``reply`` and the other options at any time."""

    def __init__(
        self,
        mode: Mode | None = None,
        *,
        api_key: str | None = None,
        reply: Callable[[dict[str, Any]], str] | None = None,
        send_usage: bool = True,
        send_done: bool = True,
        ignore_stream: bool = False,
        calls: Callable[[dict[str, Any]], list[tuple[str, str]] | None] | None = None,
        argument_piece: int = 3,
        interleave: bool = False,
        calls_finish: str = "tool_calls",
    ) -> None:
        self.mode: Mode = mode or Normal()
        self.api_key = api_key
        self.reply = reply
        self.calls = calls
        self.argument_piece = argument_piece
        self.interleave = interleave
        # The finish reason of a reply of calls (some servers say "stop").
        self.calls_finish = calls_finish
        self.send_usage = send_usage
        # Quirks of some servers: no "data: [DONE]" at the end; a JSON reply to stream=true.
        self.send_done = send_done
        self.ignore_stream = ignore_stream
        self.requests: list[RecordedRequest] = []
        # Requests whose handler is running, and the most there ever were at once.
        self.inflight = 0
        self.peak_inflight = 0
        # Content deltas of streamed replies written so far (a reader that stops reading
        # stops this count once the buffers between are full).
        self.sent = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._counted(self._chat))
        app.router.add_post("/v1/embeddings", self._counted(self._embeddings))
        app.router.add_post("/v1/completions", self._counted(self._completions))
        app.router.add_get("/v1/models", self._models)
        self.app = app

    @property
    def url(self) -> str:
        """The base URL a client configures (``.../v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> StubNode:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> StubNode:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- handlers -------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        body = {"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "stub"}]}
        return web.json_response(body)

    async def _chat(self, request: web.Request, body: Any) -> web.StreamResponse:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(
                400, "'messages' is a required property", "invalid_request_error", None
            )
        mode = self.mode
        calls = self._calls(body)
        if calls:
            return await self._tool_calls(request, body, calls)
        words = self._words(body)
        if body.get("stream") and not self.ignore_stream:
            return await self._stream(request, body, words, mode)
        return await self._whole(request, body, words, mode)

    def _error(self, status: int, message: str, type_: str, code: str | None) -> web.Response:
        return web.Response(
            status=status,
            body=_error_body(message, type_, code),
            content_type="application/json",
        )

    def _calls(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The tool calls this request gets (whole, with fresh ids), [] for text."""
        if self.calls is not None:
            wanted = self.calls(body) or []
        else:
            wanted = []
            messages = body["messages"]
            last = messages[-1] if messages else {}
            if body.get("tools") and isinstance(last, dict) and last.get("role") == "user":
                lines = [line for line in _text(last.get("content")).splitlines() if line.strip()]
                matches = [_CALL.fullmatch(line) for line in lines]
                if matches and all(matches):
                    wanted = [(m.group(1), m.group(2) or "{}") for m in matches if m]
        return [
            {"id": f"call_stub_{next(_call_ids)}", "type": "function",
             "function": {"name": name, "arguments": arguments}}
            for name, arguments in wanted
        ]  # fmt: skip

    async def _tool_calls(
        self, request: web.Request, body: dict[str, Any], calls: list[dict[str, Any]]
    ) -> web.StreamResponse:
        base: dict[str, Any] = {
            "id": f"chatcmpl-stub-{next(_ids)}",
            "created": int(time.time()),
            "model": body.get("model", ""),
        }
        pieces: list[list[dict[str, Any]]] = []
        for i, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            size = self.argument_piece
            head = {"index": i, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
            rest = [
                {"index": i, "function": {"arguments": arguments[at : at + size]}}
                for at in range(0, len(arguments), size)
            ]
            pieces.append([head, *rest])
        usage = stub_usage(body["messages"], sum(len(p) for p in pieces))
        if not body.get("stream") or self.ignore_stream:
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            choice = {"index": 0, "message": message, "finish_reason": self.calls_finish}
            reply = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            return web.Response(body=orjson.dumps(reply), content_type="application/json")
        if self.interleave:
            order = [p for group in itertools.zip_longest(*pieces) for p in group if p is not None]
        else:
            order = [p for group in pieces for p in group]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base["object"] = "chat.completion.chunk"

        async def send(delta: dict[str, Any], reason: str | None = None) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        await send({"role": "assistant", "content": None})
        for piece in order:
            await send({"tool_calls": [piece]})
        await send({}, self.calls_finish)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._end_stream(response, base, usage if include_usage else None)

    def _words(self, body: dict[str, Any]) -> tuple[list[str], str]:
        """The reply's content deltas and its finish reason (``length`` past max_tokens)."""
        messages = body["messages"]
        if self.reply is not None:
            text = self.reply(body)
        elif messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
            results = []
            for message in reversed(messages):
                if not isinstance(message, dict) or message.get("role") != "tool":
                    break
                results.append(_text(message.get("content")))
            text = "stub:" + " | ".join(reversed(results))
        else:
            last = ""
            for message in body["messages"]:
                if isinstance(message, dict) and message.get("role") == "user":
                    last = _text(message.get("content"))
            text = "stub:" + last
        words = _WORD.findall(text) or ([text] if text else [])
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(words):
            return words[:limit], "length"
        return words, "stop"

    async def _whole(
        self, request: web.Request, body: dict[str, Any], words: tuple[list[str], str], mode: Mode
    ) -> web.StreamResponse:
        parts, finish = words
        if isinstance(mode, Slow):
            await asyncio.sleep(mode.first_s)
        if isinstance(mode, FailMidStream):
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        reply = {
            "id": f"chatcmpl-stub-{next(_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "finish_reason": finish,
                }
            ],
            "usage": stub_usage(body["messages"], len(parts)),
        }
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    async def _stream(
        self, request: web.Request, body: dict[str, Any], words: tuple[list[str], str], mode: Mode
    ) -> web.StreamResponse:
        parts, finish = words
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        base: dict[str, Any] = {
            "id": f"chatcmpl-stub-{next(_ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", ""),
        }
        if include_usage:
            base["usage"] = None  # as OpenAI does on every chunk but the last

        async def send(delta: dict[str, Any], reason: str | None = None) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        await send({"role": "assistant", "content": ""})
        for i, word in enumerate(parts):
            if isinstance(mode, FailMidStream) and i == mode.after:
                return await self._cut(request, response, mode)
            if isinstance(mode, Slow):
                await asyncio.sleep(mode.first_s if i == 0 else mode.between_s)
            await send({"content": word})
            self.sent += 1
        if isinstance(mode, FailMidStream) and mode.after >= len(parts):
            return await self._cut(request, response, mode)
        await send({}, finish)
        usage = stub_usage(body["messages"], len(parts)) if include_usage else None
        return await self._end_stream(response, base, usage)

    async def _end_stream(
        self, response: web.StreamResponse, base: dict[str, Any], usage: dict[str, int] | None
    ) -> web.StreamResponse:
        """A stream's last chunks: the usage chunk (when asked for and sent) and [DONE]."""
        if usage is not None and self.send_usage:
            last = {**base, "choices": [], "usage": usage}
            await response.write(b"data: " + orjson.dumps(last) + b"\n\n")
        if self.send_done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _cut(
        self, request: web.Request, response: web.StreamResponse, mode: FailMidStream
    ) -> web.StreamResponse:
        if mode.error_event:
            error = {"error": {"message": "stub failed mid-stream", "type": "server_error"}}
            await response.write(b"data: " + orjson.dumps(error) + b"\n\n")
            await response.write_eof()
            return response
        # Drop the connection in the middle of the chunked body: the client sees a
        # truncated payload, as when an upstream process dies.
        if request.transport is not None:
            request.transport.abort()
        return response

    # -- what every endpoint shares, and the pass-through endpoints ------------------

    def _counted(
        self, handler: Callable[[web.Request, Any], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Record the request, count it in flight, and answer the modes every endpoint
        shares (auth, Fail, Hang, Slow's first wait) before ``handler(request, body)``."""

        async def counted(request: web.Request) -> web.StreamResponse:
            self.inflight += 1
            self.peak_inflight = max(self.peak_inflight, self.inflight)
            try:
                raw = await request.read()
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    body = None
                self.requests.append(
                    RecordedRequest(request.method, request.path, dict(request.headers), body)
                )
                mode = self.mode
                if self.api_key is not None and request.headers.get("Authorization") != (
                    f"Bearer {self.api_key}"
                ):
                    return self._error(
                        401,
                        "Incorrect API key provided",
                        "invalid_request_error",
                        "invalid_api_key",
                    )
                if isinstance(mode, Fail):
                    return self._error(mode.status, mode.message, mode.type, mode.code)
                if isinstance(mode, Hang):
                    await self._closing.wait()
                    if request.transport is not None:
                        request.transport.close()
                    return web.Response(status=500)
                return await handler(request, body)
            finally:
                self.inflight -= 1

        return counted

    async def _embeddings(self, request: web.Request, body: Any) -> web.StreamResponse:
        if not isinstance(body, dict) or "input" not in body:
            return self._error(400, "'input' is a required property", "invalid_request_error", None)
        if isinstance(self.mode, Slow):
            await asyncio.sleep(self.mode.first_s)
        if isinstance(self.mode, FailMidStream):
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        value = body["input"]
        items = [value] if isinstance(value, str) or isinstance(value[0], int) else value
        data = []
        for i, item in enumerate(items):
            vector: Any = stub_vector(item)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        words = sum(len(str(item).split()) for item in items)
        reply = {
            "object": "list",
            "data": data,
            "model": body.get("model", ""),
            "usage": {"prompt_tokens": words, "total_tokens": words},
        }
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    async def _completions(self, request: web.Request, body: Any) -> web.StreamResponse:
        if not isinstance(body, dict) or "prompt" not in body:
            return self._error(400, "'prompt' is required", "invalid_request_error", None)
        prompt = body["prompt"]
        prompts = [prompt] if isinstance(prompt, str) else prompt
        limit = body.get("max_tokens")
        replies = []
        for text in prompts:
            words = _WORD.findall("stub:" + str(text))
            finish = "stop"
            if isinstance(limit, int) and 0 < limit < len(words):
                words, finish = words[:limit], "length"
            replies.append((words, finish))
        used = sum(len(words) for words, _ in replies)
        prompt_words = sum(len(str(text).split()) for text in prompts)
        usage = {
            "prompt_tokens": prompt_words,
            "completion_tokens": used,
            "total_tokens": prompt_words + used,
        }
        base = {
            "id": f"cmpl-stub-{next(_ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
        }
        if not body.get("stream") or self.ignore_stream:
            if isinstance(self.mode, Slow):
                await asyncio.sleep(self.mode.first_s)
            choices = [
                {"index": i, "text": "".join(words), "finish_reason": finish, "logprobs": None}
                for i, (words, finish) in enumerate(replies)
            ]
            reply = {**base, "choices": choices, "usage": usage}
            return web.Response(body=orjson.dumps(reply), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent = 0
        for i, (words, finish) in enumerate(replies):
            for w, word in enumerate(words):
                if isinstance(self.mode, FailMidStream) and sent == self.mode.after:
                    return await self._cut(request, response, self.mode)
                if isinstance(self.mode, Slow):
                    await asyncio.sleep(self.mode.first_s if sent == 0 else self.mode.between_s)
                reason = finish if w == len(words) - 1 else None
                choice = {"index": i, "text": word, "finish_reason": reason, "logprobs": None}
                await response.write(
                    b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"
                )
                sent += 1
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._end_stream(response, base, usage if include_usage else None)


# The ``stub`` fixture (tests/conftest.py): start(mode=None, **options) -> a started node.
StartStub = Callable[..., Awaitable["StubNode"]]
# The ``make_pool`` fixture (tests/conftest.py): make(*nodes, metrics=None, environ=None,
# **BackendConfig options) -> a started pool named "up" over the nodes (or URLs).
MakePool = Callable[..., Awaitable["Pool"]]
