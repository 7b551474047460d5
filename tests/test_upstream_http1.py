"""agentd's own HTTP/1.1 client for upstream calls (agentd/backends/http1.py and
http1_connection.py) against hostile upstreams on real sockets: garbage, a close
mid-body, a stall, a stale kept-alive connection. Each gives a clear error with a stable
code, and the worker lives on."""

from __future__ import annotations

import asyncio
import gzip
import json
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.backends import ChatRequest, Pool
from agentd.backends.http1 import Http1Client, Response
from agentd.errors import UpstreamError, UpstreamTimeout

from .openai_stub import MakePool
from .procs import AgentdProcess

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def ask(text: str = "hello world") -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": text}], params={})


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


REPLY = sse(
    {"choices": [{"delta": {"content": "hi "}}]},
    {"choices": [{"delta": {"content": "there"}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}},
)


def chunked(body: bytes, size: int = 7) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def head(status: str = "200 OK", *headers: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode()


SSE_CHUNKED = head("200 OK", "Content-Type: text/event-stream", "Transfer-Encoding: chunked")


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's body, or None when the client closed the connection."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in raw.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return await reader.readexactly(length)


class RawUpstream:
    """A TCP server on 127.0.0.1 whose every connection runs ``handler``; counts them."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


def answering(*replies: bytes, then_close: bool = False) -> Handler:
    """Answer each request on a connection with the next of ``replies`` (the last one
    repeats); with ``then_close``, close after the first."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        i = 0
        while await read_request(reader) is not None:
            writer.write(replies[min(i, len(replies) - 1)])
            await writer.drain()
            i += 1
            if then_close:
                return

    return handle


async def error_of(pool: Pool, **kwargs: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await pool.complete(ask(), **kwargs)
    return info.value


# -- what comes back, framed every way ---------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        SSE_CHUNKED + chunked(REPLY),
        head("200 OK", "Content-Type: text/event-stream", f"Content-Length: {len(REPLY)}") + REPLY,
        head("200 OK", "Content-Type: text/event-stream; charset=utf-8", "Connection: close")
        + REPLY,
        head("100 Continue") + SSE_CHUNKED + chunked(REPLY, 1),
        head(
            "200 OK",
            "content-type: text/event-stream",
            "content-encoding: gzip",
            "transfer-encoding: chunked",
        )
        + chunked(gzip.compress(REPLY)),
    ],
    ids=["chunked", "content-length", "until-close", "after-100", "gzip"],
)
async def test_every_body_framing_gives_the_same_reply(reply: bytes, make_pool: MakePool) -> None:
    async with RawUpstream(answering(reply)) as up:
        pool = await make_pool(up.url)
        for _ in range(2):
            done = await pool.complete(ask())
            assert (done.text, done.finish_reason) == ("hi there", "stop")
            assert done.usage["total_tokens"] == 4


async def test_a_kept_alive_connection_serves_call_after_call(make_pool: MakePool) -> None:
    async with RawUpstream(answering(SSE_CHUNKED + chunked(REPLY))) as up:
        pool = await make_pool(up.url)
        for _ in range(5):
            assert (await pool.complete(ask())).text == "hi there"
        assert up.connections == 1


async def test_connection_close_is_honoured(make_pool: MakePool) -> None:
    reply = (
        head(
            "200 OK",
            "Content-Type: text/event-stream",
            "Connection: close",
            f"Content-Length: {len(REPLY)}",
        )
        + REPLY
    )
    async with RawUpstream(answering(reply, then_close=True)) as up:
        pool = await make_pool(up.url)
        for _ in range(3):
            assert (await pool.complete(ask())).text == "hi there"
        assert up.connections == 3


async def test_a_stale_kept_alive_connection_is_replaced_not_failed(make_pool: MakePool) -> None:
    """The server answers once, then closes the connection as the next request arrives
    (its idle timeout crossing the request): the call is sent again on a new connection."""
    good = SSE_CHUNKED + chunked(REPLY)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(good)
        await writer.drain()
        await read_request(reader)  # and close without a word

    async with RawUpstream(handle) as up:
        pool = await make_pool(up.url)
        for _ in range(3):
            assert (await pool.complete(ask())).text == "hi there"
        assert up.connections == 3


async def test_max_connections_bounds_the_connections_and_calls_wait(
    make_pool: MakePool,
) -> None:
    async with RawUpstream(answering(SSE_CHUNKED + chunked(REPLY))) as up:
        pool = await make_pool(up.url, max_connections=1)
        done = await asyncio.gather(*(pool.complete(ask()) for _ in range(6)))
        assert [d.text for d in done] == ["hi there"] * 6
        assert up.connections == 1


async def test_basic_credentials_in_the_url_are_sent(make_pool: MakePool) -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await reader.readuntil(b"\r\n\r\n")
        seen.append(raw)
        writer.write(head("200 OK", "Content-Type: text/event-stream", "Connection: close"))
        writer.write(REPLY)
        await writer.drain()

    async with RawUpstream(handle) as up:
        url = up.url.replace("http://", "http://user:secret@")
        pool = await make_pool(url)
        assert (await pool.complete(ask())).text == "hi there"
        assert pool.nodes[0].name == up.url  # no credentials in labels
    assert b"\r\nAuthorization: Basic dXNlcjpzZWNyZXQ=\r\n" in seen[0]


# -- hostile upstreams -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "upstream_protocol"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "upstream_protocol"),
        # "\xb2" is "²" in latin-1: a digit to str.isdigit(), not to int().
        (b"HTTP/1.1 2\xb20 OK\r\n\r\n", "upstream_protocol"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \xb2\r\n\r\n{}",
            "upstream_protocol",
        ),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "upstream_protocol"),
        (SSE_CHUNKED + b"zz\r\nhello\r\n", "upstream_protocol"),
        (SSE_CHUNKED + b"5\r\nhelloXX", "upstream_protocol"),
        # int(size, 16) would take these: RFC 9112's chunk size is hex digits only.
        (SSE_CHUNKED + b"0x%x\r\n%s\r\n0\r\n\r\n" % (len(REPLY), REPLY), "upstream_protocol"),
        (SSE_CHUNKED + b"+%x\r\n%s\r\n0\r\n\r\n" % (len(REPLY), REPLY), "upstream_protocol"),
        (
            head("200 OK", "Content-Type: text/event-stream", "Transfer-Encoding: gzip"),
            "upstream_protocol",
        ),
        (
            head(
                "200 OK",
                "Content-Type: text/event-stream",
                "Content-Encoding: br",
                "Content-Length: 3",
            )
            + b"abc",
            "upstream_protocol",
        ),
        (
            head("200 OK", "Content-Type: application/json", "Content-Length: 9") + b"not json!",
            "upstream_protocol",
        ),
        (
            head(
                "200 OK",
                "Content-Type: text/event-stream",
                "Content-Encoding: gzip",
                "Content-Length: 5",
            )
            + b"nogzp",
            "upstream_protocol",
        ),
        (b"HTTP/1.1 " + b"x" * 70000, "upstream_protocol"),
    ],
    ids=[
        "not-http",
        "bad-status",
        "superscript-in-status",
        "superscript-content-length",
        "bad-header",
        "bad-chunk-size",
        "chunk-without-crlf",
        "hex-prefixed-chunk-size",
        "signed-chunk-size",
        "unknown-transfer-encoding",
        "brotli",
        "json-garbage",
        "bad-gzip",
        "endless-head",
    ],
)
async def test_garbage_is_a_protocol_error(reply: bytes, code: str, make_pool: MakePool) -> None:
    async with RawUpstream(answering(reply)) as up:
        pool = await make_pool(up.url)
        error = await error_of(pool)
        assert error.code == code
        assert "malformed" in error.message


@pytest.mark.parametrize(
    "reply",
    [
        SSE_CHUNKED + chunked(REPLY)[:40],
        head("200 OK", "Content-Type: application/json", "Content-Length: 100") + b'{"cho',
        # Whole chunks, the first event passed on, then no terminating chunk.
        SSE_CHUNKED + chunked(REPLY[: REPLY.index(b"\n\n") + 2])[:-5],
    ],
    ids=["mid-chunk", "short-content-length", "no-last-chunk"],
)
async def test_a_close_mid_body_is_an_incomplete_reply(reply: bytes, make_pool: MakePool) -> None:
    async with RawUpstream(answering(reply, then_close=True)) as up:
        pool = await make_pool(up.url)
        error = await error_of(pool)
        assert error.code == "upstream_incomplete"


async def test_a_close_before_the_response_is_unreachable(make_pool: MakePool) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with RawUpstream(handle) as up:
        pool = await make_pool(up.url)
        error = await error_of(pool)
        assert error.code == "upstream_unreachable"
        assert "closed before the response" in error.message


@pytest.mark.parametrize("after_head", [False, True], ids=["before-head", "mid-body"])
async def test_a_stalled_upstream_times_out_at_the_deadline(
    after_head: bool, make_pool: MakePool
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if after_head:
            writer.write(SSE_CHUNKED + chunked(REPLY)[:30])
            await writer.drain()
        await reader.read()  # until the client gives up

    async with RawUpstream(handle) as up:
        pool = await make_pool(up.url)
        loop = asyncio.get_running_loop()
        with pytest.raises(UpstreamTimeout):
            await pool.complete(ask(), deadline=loop.time() + 0.3)
        # The stalled connection was closed, not kept: the server sees the client leave.
        assert pool.nodes[0].inflight == 0


async def test_the_client_recovers_after_every_kind_of_failure(make_pool: MakePool) -> None:
    """One upstream that misbehaves one way per connection, then answers well: every
    failure left the pool able to make the next call."""
    good = SSE_CHUNKED + chunked(REPLY)
    bad = [b"garbage\r\n\r\n", SSE_CHUNKED + b"4\r\nda", b"", b"HTTP/1.1 500 Oops\r\n"]
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while await read_request(reader) is not None:
            served += 1
            if served <= len(bad):
                writer.write(bad[served - 1])
                await writer.drain()
                return
            writer.write(good)
            await writer.drain()

    async with RawUpstream(handle) as up:
        pool = await make_pool(up.url, breaker_failures=100)
        for _ in bad:
            await error_of(pool)
        assert (await pool.complete(ask())).text == "hi there"


# -- the parser, fed every split of a response ----------------------------------------------


@given(
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30),
    st.sampled_from(["chunked", "length", "gzip"]),
)
def test_any_split_of_a_response_parses_the_same(cuts: list[int], framing: str) -> None:
    if framing == "chunked":
        raw = SSE_CHUNKED + chunked(REPLY, 5)
    elif framing == "length":
        raw = (
            head("200 OK", "Content-Type: text/event-stream", f"Content-Length: {len(REPLY)}")
            + REPLY
        )
    else:
        raw = head(
            "200 OK",
            "Content-Type: text/event-stream",
            "Content-Encoding: gzip",
            "Transfer-Encoding: chunked",
        ) + chunked(gzip.compress(REPLY), 3)
    pieces = []
    at = 0
    for cut in cuts:
        if at >= len(raw):
            break
        pieces.append(raw[at : at + cut])
        at += cut
    if at < len(raw):
        pieces.append(raw[at:])
    assert asyncio.run(_parse(pieces)) == (200, "text/event-stream", REPLY)


async def _parse(pieces: list[bytes]) -> tuple[int, str, bytes]:
    """Feed ``pieces`` to a connection as if they came from its socket, one read each."""
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Http1Client(1, 5.0)
    origin, _ = client.origin_of(f"http://127.0.0.1:{port}/")
    conn = await client._pool(origin).acquire(loop.time() + 5)
    conn.response = response = Response(conn)
    conn._head_waiter = loop.create_future()
    for piece in pieces:
        conn.data_received(piece)
    body = await response.read()
    assert response.done and conn.finished()
    conn.close()
    server.close()
    return response.status, response.content_type, body


# -- the worker lives on ---------------------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
async def hostile() -> AsyncIterator[RawUpstream]:
    """Garbage on the first connection, a cut stream on the second, good replies after."""
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while await read_request(reader) is not None:
            served += 1
            if served == 1:
                writer.write(b"\x00\xff garbage \r\n\r\n")
                return
            if served == 2:
                writer.write(SSE_CHUNKED + chunked(REPLY)[:60])
                await writer.drain()
                return
            writer.write(SSE_CHUNKED + chunked(REPLY))
            await writer.drain()

    async with RawUpstream(handle) as up:
        yield up


async def test_a_worker_answers_hostile_upstreams_with_errors_and_lives_on(
    hostile: RawUpstream, agentd_instance: Callable[..., AgentdProcess]
) -> None:
    config = f"""
[[backends]]
name = "up"
type = "openai"
urls = ["{hostile.url}"]
breaker_failures = 100
[[agents]]
name = "m"
backend = "up"
"""
    proc = await asyncio.to_thread(agentd_instance, config)
    url = proc.url + "/v1/chat/completions"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    status, reply = await asyncio.to_thread(_post, url, body)
    assert (status, reply["error"]["code"]) == (502, "upstream_protocol")
    status, reply = await asyncio.to_thread(_post, url, body)
    assert (status, reply["error"]["code"]) == (502, "upstream_incomplete")
    for _ in range(3):
        status, reply = await asyncio.to_thread(_post, url, body)
        assert status == 200
        assert reply["choices"][0]["message"]["content"] == "hi there"
    assert proc.proc.poll() is None
