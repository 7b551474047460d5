"""The front's streamed chat completions (agentd/server/front_stream.py) against real
``agentd serve`` processes over raw sockets, with the OpenAI-compatible stub as their
upstream: each stream the front writes is, chunk for chunk, the one aiohttp's route
writes (an instance with ``server.front = false`` beside it is the reference), errors
before and after the first byte included; a client that stops reading holds the model
call instead of making the worker buffer the reply; and a client that leaves mid-stream
ends the model call."""

from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Callable, Iterator

import pytest

from .openai_stub import Fail, FailMidStream, Normal, Slow
from .procs import AgentdProcess, metric, new_key
from .stub_thread import ThreadedStub
from .waiting import wait_until_sync

ADMIN_KEY = "sk-admin-front-stream-0123456789abcdef"
LIMIT_S = 60.0
ROUTE = "/v1/chat/completions"
# A reply far larger than every buffer between the stub and a client that does not read.
BIG_WORDS = 30000
BIG_WORD = "x" * 1000


def _config(front: bool, stub: ThreadedStub) -> str:
    return f"""
[server]
front = {"true" if front else "false"}
keepalive_timeout = 5.0
[auth]
mode = "keys"
[[backends]]
name = "up"
type = "openai"
urls = ["{stub.url}"]
breaker_failures = 1000
[[agents]]
name = "up"
backend = "up"
[[agents]]
name = "fresh"
backend = "up"
cache = {{mode = "off"}}
"""


Pair = tuple[AgentdProcess, AgentdProcess, ThreadedStub, str, str]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """An instance with the front and one without, both calling one stub, and a key on
    each with the same request limit."""
    stub = ThreadedStub(Normal())
    procs = []
    try:
        for front in (True, False):
            workdir = tmp_path_factory.mktemp("stream-front" if front else "stream-plain")
            proc = AgentdProcess(workdir, _config(front, stub), [], {"AGENTD_ADMIN_KEY": ADMIN_KEY})
            procs.append(proc)
        for proc in procs:
            proc.wait_ready()
        keys = [_new_key(proc, requests_per_minute=100000) for proc in procs]
        yield procs[0], procs[1], stub, keys[0], keys[1]
    finally:
        for proc in procs:
            proc.stop()
        stub.close()


def _new_key(proc: AgentdProcess, **limits: int) -> str:
    return new_key(proc, ADMIN_KEY, LIMIT_S, **limits)


def _body(content: str = "hello there", model: str = "up", **extra: object) -> bytes:
    doc = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True}
    return json.dumps({**doc, **extra}, separators=(",", ":")).encode()


def _post(body: bytes, key: str | None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: agentd\r\nContent-Type: application/json\r\n"
        + auth
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


Answer = tuple[bytes, list[tuple[bytes, bytes]], list[bytes]]


class Reader:
    """HTTP/1.1 answers off a raw socket, with their chunks as the server framed them."""

    def __init__(self, port: int, rcvbuf: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(LIMIT_S)
        self.sock.connect(("127.0.0.1", port))
        self.data = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _need(self, size: int) -> None:
        while len(self.data) < size:
            chunk = self.sock.recv(1 << 20)
            assert chunk, f"closed early; got {self.data[:300]!r}"
            self.data += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.data:
            self._need(len(self.data) + 1)
        line, _, self.data = self.data.partition(b"\r\n")
        return line

    def answer(self) -> Answer:
        """The next answer: status line, headers in order, and its body's chunks (one
        chunk, the whole body, for a Content-Length answer)."""
        while b"\r\n\r\n" not in self.data:
            self._need(len(self.data) + 1)
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = [(n, v) for n, _, v in (line.partition(b": ") for line in lines)]
        named = {n.lower(): v for n, v in headers}
        if named.get(b"transfer-encoding") != b"chunked":
            length = int(named.get(b"content-length", b"0"))
            self._need(length)
            body, self.data = self.data[:length], self.data[length:]
            return status, headers, [body]
        chunks = []
        while True:
            size = int(self._line(), 16)
            self._need(size + 2)
            chunk, self.data = self.data[:size], self.data[size + 2 :]
            if not size:
                return status, headers, chunks
            chunks.append(chunk)

    def close(self) -> None:
        self.sock.close()


def _comparable(answer: Answer) -> tuple[object, ...]:
    """An answer less what differs between two servers and two turns by nature: Date,
    ids, times, timings and how long until a limit resets."""
    status, headers, chunks = answer
    kept = [
        (n, b"-" if n in (b"Retry-After", b"Content-Length") else re.sub(rb"dur=[0-9.]+", b"", v))
        for n, v in headers
        if n.lower() != b"date" and not n.lower().startswith(b"x-ratelimit-reset")
    ]
    same = [
        re.sub(
            rb'"id":"chatcmpl-[0-9a-f]+","object":"chat\.completion(\.chunk)?","created":\d+',
            b"",
            re.sub(rb"retry in \d+s", b"retry in -s", chunk),
        )
        for chunk in chunks
    ]
    return status, kept, same


def _talk(port: int, key: str, requests: list[bytes], pipelined: bool = False) -> list[object]:
    reader = Reader(port)
    try:
        if pipelined:
            reader.send(b"".join(requests))
            return [_comparable(reader.answer()) for _ in requests]
        out = []
        for request in requests:
            reader.send(request)
            out.append(_comparable(reader.answer()))
        return out
    finally:
        reader.close()


def _both(pair: Pair, make: Callable[[str], list[bytes]], pipelined: bool = False) -> list[object]:
    """What the front answers and what aiohttp answers, asserted equal; the front's."""
    front, plain, _, key_front, key_plain = pair
    ours = _talk(front.port, key_front, make(key_front), pipelined)
    theirs = _talk(plain.port, key_plain, make(key_plain), pipelined)
    assert ours == theirs
    return ours


def _events(answer: object) -> list[bytes]:
    return answer[2]  # type: ignore[index,no-any-return]


def test_streams_match_aiohttp_chunk_for_chunk(pair: Pair) -> None:
    """A miss then cache hits, with and without the usage chunk, a stream after a plain
    completion and a plain one after a stream on one connection, one by one and
    pipelined, and a body that says ``"stream": false``."""
    cached = _body(temperature=0)
    usage = _body("with usage", temperature=0, stream_options={"include_usage": True})
    plain = cached.replace(b'"stream":true', b'"stream":false')

    def requests(key: str) -> list[bytes]:
        bodies = (cached, cached, usage, usage, plain, plain, cached, _body())
        return [_post(b, key) for b in bodies]

    ours = _both(pair, requests)
    caches = [dict(h).get(b"X-Cache") for _, h, _ in ours]  # type: ignore[misc]
    assert caches == [b"miss", b"hit-l1", b"miss", b"hit-l1"] + [b"hit-l1"] * 3 + [b"bypass"]
    first = ours[0]
    assert [n for n, _ in first[1]] == [  # type: ignore[index]
        b"Content-Type", b"Cache-Control", b"X-Accel-Buffering", b"X-Cache",
        b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests",
        b"Transfer-Encoding", b"Server",
    ]  # fmt: skip
    said = [json.loads(e[6:].replace(b"{,", b"{", 1)) for e in _events(first)[:-1]]
    assert "".join(d["choices"][0]["delta"].get("content") or "" for d in said) == (
        "stub:hello there"
    )
    assert _events(first)[-1] == b"data: [DONE]\n\n"
    assert b'"usage"' in _events(ours[2])[-2] and b'"usage"' not in _events(first)[-2]
    _both(pair, requests, pipelined=True)


def test_errors_before_and_after_the_first_byte_match_aiohttp(pair: Pair) -> None:
    """Refused before the turn (no key, an unknown agent: aiohttp's answers), the
    upstream failing before its first token (a JSON error), failing mid-stream (an error
    chunk, then ``[DONE]``), and past the key's limit (429)."""
    front, plain, stub, _, _ = pair
    fresh = _body("fail me", model="fresh")
    try:
        stub.node.mode = Fail(503)
        before = _both(pair, lambda key: [_post(fresh, key)])
        assert before[0][0] != b"HTTP/1.1 200 OK"  # type: ignore[index]
        assert dict(before[0][1])[b"Content-Type"] == b"application/json"  # type: ignore[index]
        stub.node.mode = FailMidStream(2, error_event=True)
        after = _both(pair, lambda key: [_post(fresh, key)])
        assert after[0][0] == b"HTTP/1.1 200 OK"  # type: ignore[index]
        assert b'"error"' in _events(after[0])[-2] and _events(after[0])[-1] == b"data: [DONE]\n\n"
    finally:
        stub.node.mode = Normal()
    refused = [_post(_body(), None), _post(_body(model="nobody"), "sk-nobody-0123456789")]
    assert [a[0] for a in _both(pair, lambda key: refused)] == [  # type: ignore[index]
        b"HTTP/1.1 401 Unauthorized"
    ] * 2
    limited = [_new_key(front, requests_per_minute=1), _new_key(plain, requests_per_minute=1)]
    answers = [
        _talk(proc.port, key, [_post(_body(temperature=0), key)] * 2)
        for proc, key in zip((front, plain), limited, strict=True)
    ]
    assert answers[0] == answers[1]
    assert [a[0] for a in answers[0]] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 429 Too Many Requests"]  # type: ignore[index]


def _big(body: dict[str, object]) -> str:
    return " ".join([BIG_WORD] * BIG_WORDS)


def _still(stub: ThreadedStub, before: int) -> Callable[[], bool]:
    """A predicate: the stub has streamed since ``before`` and not since the last look."""
    seen = [-1]

    def still() -> bool:
        now = stub.node.sent
        same, seen[0] = now == seen[0], now
        return same and now > before

    return still


def test_a_client_that_stops_reading_holds_the_model_call(pair: Pair) -> None:
    """A reply far larger than every buffer, to a client that reads nothing: the stub's
    writes stop (the worker stops reading the model once its client's buffer is full,
    as aiohttp's route does) well before the reply is sent; read later, the stream is
    whole and aiohttp's."""
    front, plain, stub, key_front, key_plain = pair
    stub.node.reply = _big
    readers: list[Reader] = []
    try:
        got = []
        for proc, key in ((front, key_front), (plain, key_plain)):
            reader = Reader(proc.port, rcvbuf=4096)
            readers.append(reader)
            before = stub.node.sent
            reader.send(_post(_body("big", model="fresh"), key))
            wait_until_sync(_still(stub, before), LIMIT_S, "the stub's writes to stop", poll_s=1.0)
            # Stopped before the end. Not a tighter bound: the kernel's autotuned socket
            # buffers (tcp_rmem's maximum is 32 MiB on some hosts) may hold half the reply.
            assert stub.node.sent - before < BIG_WORDS, "the reply was buffered"
            answer = reader.answer()
            assert len(answer[2]) == BIG_WORDS + 3  # role, words, finish, [DONE]
            got.append(_comparable(answer))
        assert got[0] == got[1]
    finally:
        for reader in readers:
            reader.close()  # an unread stream would hold the stub's call open
        stub.node.reply = None


def test_a_client_that_leaves_mid_stream_ends_the_model_call(pair: Pair) -> None:
    """A client that reads the first chunks and leaves, and one that stops reading and
    then leaves: the worker ends the model call at once (the stub's handler ends long
    before its reply would have), counts 499 and logs no error; so does aiohttp."""
    front, plain, stub, key_front, key_plain = pair
    words = 400
    stub.node.reply = lambda body: " ".join(["w"] * words)
    stub.node.mode = Slow(first_s=0.0, between_s=0.05)  # 20 s for the whole reply
    sample = f'agentd_http_requests_total{{method="POST",route="{ROUTE}",status="499"}}'
    try:
        for proc, key in ((front, key_front), (plain, key_plain)):
            counted = metric(proc, sample) or 0
            before = stub.node.sent
            reader = Reader(proc.port)
            reader.send(_post(_body("leave", model="fresh"), key))
            while reader.data.count(b"data: ") < 3:
                reader._need(len(reader.data) + 1)
            reader.close()
            wait_until_sync(lambda: stub.node.inflight == 0, 15.0, "the model call to end")
            assert stub.node.sent - before < words / 2
            wait_until_sync(
                lambda p=proc, c=counted: (metric(p, sample) or 0) == c + 1, what="a 499"
            )
            assert "Traceback" not in proc.log()
        stub.node.mode = Normal()
        stub.node.reply = _big
        for proc, key in ((front, key_front), (plain, key_plain)):
            before = stub.node.sent
            reader = Reader(proc.port, rcvbuf=4096)
            reader.send(_post(_body("big", model="fresh"), key))
            wait_until_sync(lambda b=before: stub.node.sent > b, what="the stream to start")
            reader.close()
            wait_until_sync(lambda: stub.node.inflight == 0, 15.0, "the model call to end")
            assert stub.node.sent - before < BIG_WORDS  # ended early (kernel buffers: above)
            assert "Traceback" not in proc.log()
    finally:
        stub.node.mode = Normal()
        stub.node.reply = None


def test_a_stream_closes_its_connection_while_the_instance_leaves(
    agentd_instance: Callable[..., AgentdProcess],
) -> None:
    """Leaving: a stream's head says ``Connection: close`` and the connection ends after
    it, as aiohttp's (close_when_draining)."""
    answers = []
    for front in (True, False):
        proc = agentd_instance(f"[server]\nfront = {'true' if front else 'false'}\n"
                               "drain_delay_s = 60\n")  # fmt: skip
        body = _body(model="echo", temperature=0)
        reader = Reader(proc.port)
        reader.send(_post(body, None))
        assert dict(reader.answer()[1]).get(b"Connection") is None
        proc.send(signal.SIGTERM)  # leaving: /readyz fails, every answer closes
        wait_until_sync(lambda p=proc: p.get("/readyz")[0] == 503, what="readyz 503")
        reader.send(_post(body, None) + _post(body, None))
        answers.append(_comparable(reader.answer()))
        assert answers[-1][1][-1] == (b"Connection", b"close")  # type: ignore[index]
        assert reader.sock.recv(65536) == b"" and reader.data == b""
        reader.close()
    assert answers[0] == answers[1]
