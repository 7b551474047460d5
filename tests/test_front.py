"""The front (agentd/server/front.py) against real ``agentd serve`` processes over raw
sockets: what it answers itself is what aiohttp answers (an instance with
``server.front = false`` beside it is the reference), a connection it hands over
mid-way keeps its order and its bytes, and hostile input gets aiohttp's own answers."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import redis

from agentd.server.front_chat import MEMO_BODY_BYTES, MEMO_ENTRIES

from .procs import AgentdProcess, RedisServer, metric, new_key
from .waiting import wait_until_sync

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: agentd\r\n\r\n"
INFO = b"GET /v1/info HTTP/1.1\r\nHost: agentd\r\n\r\n"
MISSING = b"GET /nowhere HTTP/1.1\r\nHost: agentd\r\n\r\n"
LIMIT_S = 30.0


def _config(front: bool, extra: str = "") -> str:
    return f"[server]\nfront = {'true' if front else 'false'}\n{extra}"


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[AgentdProcess, AgentdProcess]]:
    """An instance with the front (the default) and one without, side by side. Their
    short keep-alive timeout ends every connection left idle, so a test reads an answer
    to the end of its connection, whichever side closes it."""
    procs = []
    for front in (True, False):
        workdir = tmp_path_factory.mktemp("front" if front else "plain")
        procs.append(AgentdProcess(workdir, _config(front, "keepalive_timeout = 2.0"), [], {}))
    try:
        for proc in procs:
            proc.wait_ready()
        yield procs[0], procs[1]
    finally:
        for proc in procs:
            proc.stop()


class Reader:
    """HTTP/1.1 answers read off a raw socket one at a time (Content-Length bodies)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=LIMIT_S)
        self.data = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.data += chunk
        return bool(chunk)

    def answer(self) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
        """The next answer: status line, headers in order, body."""
        while b"\r\n\r\n" not in self.data:
            assert self._fill(), f"closed before an answer; got {self.data!r}"
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = [(n, v) for n, _, v in (line.partition(b": ") for line in lines)]
        length = int(dict((n.lower(), v) for n, v in headers).get(b"content-length", b"0"))
        while len(self.data) < length:
            assert self._fill(), "closed inside a body"
        body, self.data = self.data[:length], self.data[length:]
        return status, headers, body

    def closed(self) -> bool:
        """Whether the server closes the connection (reading everything it still sends)."""
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def _comparable(answer: tuple[bytes, list[tuple[bytes, bytes]], bytes]) -> tuple[object, ...]:
    """An answer less what differs between two servers by nature: its Date, and the
    worker's own figures in /v1/info."""
    status, headers, body = answer
    kept = [(n, v) for n, v in headers if n.lower() != b"date"]
    body = re.sub(rb'"(pid|generation)":\d+', rb'"\1":0', body)
    body = re.sub(rb'"Content-Length: \d+', b"", body)
    return status, kept, body


def _exchange(port: int, data: bytes, answers: int) -> list[tuple[object, ...]]:
    reader = Reader(port)
    try:
        reader.send(data)
        return [_comparable(reader.answer()) for _ in range(answers)]
    finally:
        reader.close()


def _raw(port: int, data: bytes) -> bytes:
    """Everything the server sends after ``data`` until it closes the connection (at
    the latest its keep-alive timeout after its last answer), Date headers blanked. The
    client does not shut its side down: aiohttp closes a connection at the client's
    end of input, sometimes before the answer to what came before it is written."""
    with socket.create_connection(("127.0.0.1", port), timeout=LIMIT_S) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return re.sub(rb"Date: [^\r]*\r\n", b"Date: -\r\n", out)


def _front_log(proc: AgentdProcess) -> bool:
    return "front on" in proc.log()


def test_health_check_answers_match_aiohttp(pair: tuple[AgentdProcess, AgentdProcess]) -> None:
    front, plain = pair
    assert _front_log(front) and not _front_log(plain)
    ours, theirs = _exchange(front.port, HEALTHZ, 1), _exchange(plain.port, HEALTHZ, 1)
    assert ours == theirs
    status, headers, body = ours[0]
    assert status == b"HTTP/1.1 200 OK" and body == b'{"status":"ok"}'
    assert [n for n, _ in headers] == [b"Content-Type", b"Content-Length", b"Server"]


def test_hot_and_other_requests_share_a_keep_alive_connection(
    pair: tuple[AgentdProcess, AgentdProcess],
) -> None:
    """Hot, handed over, hot again (now aiohttp's), a 404, one by one and pipelined in
    one send: the same answers in the same order on both."""
    front, plain = pair
    sequence = [HEALTHZ, HEALTHZ, INFO, HEALTHZ, MISSING, HEALTHZ]
    for port in (front.port, plain.port):
        reader = Reader(port)
        got = []
        for request in sequence:
            reader.send(request)
            got.append(_comparable(reader.answer()))
        reader.close()
        pipelined = _exchange(port, b"".join(sequence), len(sequence))
        assert got == pipelined
        if port == front.port:
            expected = got
    assert expected == got  # the front's answers (expected) match aiohttp's (got)
    assert [a[0] for a in expected] == [b"HTTP/1.1 200 OK"] * 4 + [
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 200 OK",
    ]


def test_hand_over_with_a_partial_request_buffered(
    pair: tuple[AgentdProcess, AgentdProcess],
) -> None:
    """A hot request and the first bytes of another in one send, the rest later: the
    front answers the first and aiohttp gets the second whole."""
    front, _ = pair
    reader = Reader(front.port)
    reader.send(HEALTHZ + INFO[:10])
    assert reader.answer()[0] == b"HTTP/1.1 200 OK"
    reader.send(INFO[10:])
    status, _, body = reader.answer()
    assert status == b"HTTP/1.1 200 OK" and b'"version"' in body
    reader.close()


def test_a_hot_request_sent_byte_by_byte_is_answered(
    pair: tuple[AgentdProcess, AgentdProcess],
) -> None:
    front, _ = pair
    reader = Reader(front.port)
    for i in range(len(HEALTHZ)):
        reader.send(HEALTHZ[i : i + 1])
    assert reader.answer()[2] == b'{"status":"ok"}'
    reader.send(HEALTHZ)  # and the connection goes on
    assert reader.answer()[2] == b'{"status":"ok"}'
    reader.close()


HOSTILE = [
    b"GET /healthz HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: a\r\n\r\n",
    b"GET /healthz HTTP/1.0\r\nHost: a\r\n\r\n",
    b"get /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\r\n continued\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nX: \xff\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" + HEALTHZ,
    b"GET /healthz HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n" + HEALTHZ,
    b"GET /healthz HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",
    HEALTHZ + b"GET /healthz HTTP/1.1\r\n",  # a partial request left at the end
    b"\r\n" + HEALTHZ,
    b"GET /healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\r\nUser-Agent: a\r\nuser-agent: b\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key1: 1\r\n\r\n",
]


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
def test_unusual_input_gets_aiohttps_answers(
    pair: tuple[AgentdProcess, AgentdProcess], data: bytes
) -> None:
    front, plain = pair
    theirs = _raw(plain.port, data)
    assert _raw(front.port, data) == theirs


GARBAGE = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GARBAGE\r\n\r\n", b"\x00" * 10]


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_after_a_hot_request_gets_aiohttps_answer_after_the_hot_one(
    pair: tuple[AgentdProcess, AgentdProcess], garbage: bytes
) -> None:
    """A hot request and garbage in one send: the front answers the request and aiohttp
    the garbage, as aiohttp alone does when the two arrive in separate reads (when they
    come in one read, aiohttp's parser fails on the garbage and drops the request before
    it)."""
    front, plain = pair
    theirs = _raw(plain.port, HEALTHZ) + _raw(plain.port, garbage)
    assert _raw(front.port, HEALTHZ + garbage) == theirs
    assert theirs.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.0 400 Bad Request" in theirs


def test_an_idle_or_slow_connection_is_closed_after_the_keepalive_timeout(
    agentd_instance: Callable[..., AgentdProcess],
) -> None:
    """Idle, a head that never ends, idle after an answer: closed, as aiohttp closes
    them. A request whose body is on its way is not idle: it outlives them and is
    answered when the rest comes."""
    front = agentd_instance(_config(True, "keepalive_timeout = 1.0"))
    idle, slow, answered = Reader(front.port), Reader(front.port), Reader(front.port)
    uploading = Reader(front.port)
    slow.send(HEALTHZ[:12])  # a head that never ends
    request = _chat()
    uploading.send(request[:-5])
    answered.send(HEALTHZ)
    assert answered.answer()[0] == b"HTTP/1.1 200 OK"
    for reader in (idle, slow, answered):
        assert reader.closed()
        assert reader.data == b""
        reader.close()
    uploading.send(request[-5:])
    assert uploading.answer()[0] == b"HTTP/1.1 200 OK"
    uploading.close()


def test_answers_close_their_connection_while_the_instance_leaves(
    agentd_instance: Callable[..., AgentdProcess],
) -> None:
    front = agentd_instance(_config(True, "drain_delay_s = 60"))
    reader = Reader(front.port)
    reader.send(HEALTHZ)
    assert dict(reader.answer()[1]).get(b"Connection") is None
    front.send(signal.SIGTERM)  # leaving: /readyz fails, every answer closes
    wait_until_sync(lambda: front.get("/readyz")[0] == 503, what="readyz 503")
    reader.send(HEALTHZ + HEALTHZ)
    status, headers, body = reader.answer()
    assert status == b"HTTP/1.1 200 OK" and body == b'{"status":"ok"}'
    assert headers[-1] == (b"Connection", b"close")
    assert reader.closed() and reader.data == b""
    reader.close()


def test_answers_are_counted_in_the_request_metrics(
    pair: tuple[AgentdProcess, AgentdProcess],
) -> None:
    front, _ = pair
    sample = 'agentd_http_requests_total{method="GET",route="/healthz",status="200"}'
    before = metric(front, sample) or 0
    _exchange(front.port, HEALTHZ * 25, 25)
    wait_until_sync(
        lambda: (metric(front, sample) or 0) >= before + 25, what="25 health checks counted"
    )


def test_a_client_that_does_not_read_gets_every_answer_later(
    pair: tuple[AgentdProcess, AgentdProcess],
) -> None:
    """Tens of thousands of pipelined requests sent with nothing read until the send
    would block (the server stopped reading: its answers wait), then the answers read
    whenever it blocks: every one arrives, in order, and the last request, which the
    front hands over, is answered too."""
    front, _ = pair
    count = 40000
    reader = Reader(front.port)
    payload = HEALTHZ * count + INFO
    sent = 0
    while sent < len(payload):
        reader.sock.setblocking(False)
        try:
            sent += reader.sock.send(payload[sent : sent + 65536])
        except BlockingIOError:
            reader.sock.settimeout(LIMIT_S)
            assert reader._fill()  # the server has answers waiting for this client
    reader.sock.settimeout(LIMIT_S)
    for _ in range(count):
        assert reader.answer()[2] == b'{"status":"ok"}'
    assert b'"version"' in reader.answer()[2]
    reader.close()


# -- the chat completion ----------------------------------------------------------------

ADMIN_KEY = "sk-admin-front-test-0123456789abcdef"
CHAT_BODY = b'{"model":"echo","messages":[{"role":"user","content":"hello there"}],"temperature":0}'


def _chat(body: bytes = CHAT_BODY, key: str | None = None, extra: bytes = b"") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: agentd\r\nContent-Type: application/json\r\n"
        + auth
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _chat_comparable(answer: tuple[bytes, list[tuple[bytes, bytes]], bytes]) -> tuple[object, ...]:
    """A chat answer less its id, time and timings, which differ from one to the next."""
    status, headers, body = _comparable(answer)
    kept = [(n, re.sub(rb"dur=[0-9.]+", b"dur=0", v)) for n, v in headers]  # type: ignore[attr-defined]
    # How long until a limit resets moves with the clock between the two servers' answers.
    # (and with it the length of a refusal, which says it).
    timed = {b"Retry-After", b"Content-Length"} if b" 429 " in status else {b"Retry-After"}  # type: ignore[operator]
    kept = [
        (n, b"-" if n in timed else v)
        for n, v in kept
        if not n.lower().startswith(b"x-ratelimit-reset")
    ]
    body = re.sub(rb"retry in \d+s", b"retry in -s", body)  # type: ignore[arg-type]
    body = re.sub(rb'"id":"chatcmpl-[0-9a-f]+","object":"chat.completion","created":\d+', b"", body)  # type: ignore[arg-type]
    return status, kept, body


def _chats(port: int, requests: list[bytes]) -> list[tuple[object, ...]]:
    reader = Reader(port)
    try:
        out = []
        for request in requests:
            reader.send(request)
            out.append(_chat_comparable(reader.answer()))
        return out
    finally:
        reader.close()


def test_chat_answers_match_aiohttp(pair: tuple[AgentdProcess, AgentdProcess]) -> None:
    """A miss then L1 hits, one by one and pipelined with other requests, and the
    requests the front gives to aiohttp (a session, a bad body, an unknown
    agent, a body sent in two parts): the same answers on both."""
    front, plain = pair
    stream = CHAT_BODY[:-1] + b',"stream":true}'
    session = CHAT_BODY[:-1] + b',"session_id":"front-test"}'
    requests = [
        _chat(),
        _chat(),
        HEALTHZ,
        _chat(),
        _chat(b"{not json"),
        _chat(CHAT_BODY.replace(b'"echo"', b'"nobody"')),
        _chat(),
    ]
    ours, theirs = _chats(front.port, requests), _chats(plain.port, requests)
    assert ours == theirs
    caches = [dict(h).get(b"X-Cache") for _, h, _ in ours]  # type: ignore[arg-type]
    assert caches == [b"miss", b"hit-l1", None, b"hit-l1", None, None, b"hit-l1"]
    for port in (front.port, plain.port):
        piped = _exchange(port, b"".join(requests[1:4]), 3)
        assert [a[0] for a in piped] == [b"HTTP/1.1 200 OK"] * 3
    # A stream (the front's: tests/test_front_stream.py) and a session (aiohttp's).
    for body in (stream, session):
        assert _raw_status(front.port, _chat(body)) == _raw_status(plain.port, _chat(body))
    # A body in two sends: the front waits for the rest.
    reader = Reader(front.port)
    request = _chat()
    reader.send(request[:-10])
    reader.send(request[-10:])
    assert dict(reader.answer()[1]).get(b"X-Cache") == b"hit-l1"
    reader.close()


def test_distinct_chat_bodies_each_get_their_own_answer(
    pair: tuple[AgentdProcess, AgentdProcess],
) -> None:
    """More distinct bodies than the front keeps turns for, one longer than it keeps,
    each sent twice (a miss, then an L1 hit) after the others: every answer is its own
    body's, as aiohttp's."""
    front, plain = pair
    contents = [f"memo {i}" for i in range(MEMO_ENTRIES + 6)] + ["x" * MEMO_BODY_BYTES]
    bodies = [CHAT_BODY.replace(b"hello there", c.encode()) for c in contents]
    requests = [_chat(body) for body in bodies] * 2
    ours, theirs = _chats(front.port, requests), _chats(plain.port, requests)
    assert ours == theirs
    # (The comparable bodies lack their id and time: `{,"model"...`.)
    whole = [json.loads(body.replace(b"{,", b"{", 1)) for _, _, body in ours]  # type: ignore[attr-defined]
    said = [reply["choices"][0]["message"]["content"] for reply in whole]
    assert said == contents * 2
    caches = [dict(h).get(b"X-Cache") for _, h, _ in ours]  # type: ignore[arg-type]
    assert caches == [b"miss"] * len(bodies) + [b"hit-l1"] * len(bodies)


def _raw_status(port: int, request: bytes) -> bytes:
    reader = Reader(port)
    reader.send(request)
    status = reader.answer()[0] if b'"stream"' not in request else _first_line(reader)
    reader.close()
    return status


def _first_line(reader: Reader) -> bytes:
    while b"\r\n" not in reader.data:
        assert reader._fill()
    return reader.data.split(b"\r\n", 1)[0]


@pytest.fixture(scope="module")
def keyed_pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[AgentdProcess, AgentdProcess]]:
    """Both instances in keys mode with the same admin key."""
    procs = []
    for front in (True, False):
        workdir = tmp_path_factory.mktemp("keyed-front" if front else "keyed-plain")
        config = _config(front) + '[auth]\nmode = "keys"\n'
        procs.append(AgentdProcess(workdir, config, [], {"AGENTD_ADMIN_KEY": ADMIN_KEY}))
    try:
        for proc in procs:
            proc.wait_ready()
        yield procs[0], procs[1]
    finally:
        for proc in procs:
            proc.stop()


def _new_key(proc: AgentdProcess, **limits: int) -> str:
    return new_key(proc, ADMIN_KEY, LIMIT_S, **limits)


def test_chat_with_a_key_and_its_limits_matches_aiohttp(
    keyed_pair: tuple[AgentdProcess, AgentdProcess],
) -> None:
    """With a key: the rate-limit headers on each answer, 429 with Retry-After past the
    limit; without one or with a bad one: aiohttp's 401."""
    front, plain = keyed_pair
    answers = []
    for proc in (front, plain):
        key = _new_key(proc, requests_per_minute=3)
        requests = [_chat(key=key)] * 4 + [_chat(), _chat(key="sk-nobody-0123456789")]
        answers.append(_chats(proc.port, requests))
    ours, theirs = answers
    assert ours == theirs
    assert [a[0] for a in ours] == [b"HTTP/1.1 200 OK"] * 3 + [
        b"HTTP/1.1 429 Too Many Requests",
        b"HTTP/1.1 401 Unauthorized",
        b"HTTP/1.1 401 Unauthorized",
    ]
    remaining = [dict(h).get(b"x-ratelimit-remaining-requests") for _, h, _ in ours[:3]]  # type: ignore[arg-type]
    assert remaining == [b"2", b"1", b"0"]
    assert b"Retry-After" in dict(ours[3][1])  # type: ignore[arg-type]


def _revoke(proc: AgentdProcess, key: str) -> None:
    key_id = key.split("-", 3)[2]  # sk-agentd-<id>-<secret>, the secret may hold "-"
    request = urllib.request.Request(
        f"{proc.url}/v1/admin/keys/{key_id}",
        method="DELETE",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=LIMIT_S) as reply:
        assert reply.status == 200


def test_the_same_body_from_other_callers_is_their_own_turn(
    keyed_pair: tuple[AgentdProcess, AgentdProcess],
) -> None:
    """The front keeps a body's turn with the caller it was built for: the same bytes
    from another key are that key's turn (its limits, its headers), with no key they
    are refused, and once a key is revoked its kept turn is not served to it again."""
    front, _ = keyed_pair
    one = _new_key(front, requests_per_minute=5)
    two = _new_key(front, requests_per_minute=7)
    answers = _chats(front.port, [_chat(key=one), _chat(key=two)] * 2 + [_chat()])
    statuses = [a[0] for a in answers]
    assert statuses == [b"HTTP/1.1 200 OK"] * 4 + [b"HTTP/1.1 401 Unauthorized"]
    limits = [dict(h).get(b"x-ratelimit-limit-requests") for _, h, _ in answers[:4]]  # type: ignore[arg-type]
    remaining = [dict(h).get(b"x-ratelimit-remaining-requests") for _, h, _ in answers[:4]]  # type: ignore[arg-type]
    assert limits == [b"5", b"7", b"5", b"7"]
    assert remaining == [b"4", b"6", b"3", b"5"]
    _revoke(front, one)
    after = _chats(front.port, [_chat(key=one), _chat(key=two)])
    assert [a[0] for a in after] == [b"HTTP/1.1 401 Unauthorized", b"HTTP/1.1 200 OK"]


def test_a_keyed_turn_that_must_reach_redis_in_its_first_step_is_answered(
    agentd_instance: Callable[..., AgentdProcess], redis_standalone: RedisServer
) -> None:
    """The front runs a request's first step outside any task; a key this worker does not
    know yet and the L2 cache are read from Redis there, on connections opened anew (the
    server closed the idle ones), whose timeouts need a task."""
    proc = agentd_instance(
        f'[redis]\nurls = ["{redis_standalone.url}"]\n[auth]\nmode = "keys"\n',
        env={"AGENTD_ADMIN_KEY": ADMIN_KEY},
    )
    key = _new_key(proc)  # made through aiohttp: this worker reads it on first use
    body = b'{"model": "echo", "temperature": 0, "messages": [{"role": "user", "content": "l2"}]}'
    with redis.Redis(port=redis_standalone.port) as client:
        assert client.client_kill_filter(_type="normal", skipme=True) > 0
    answers = _chats(proc.port, [_chat(body, key=key)] * 2)  # a miss (L1 and L2), then a hit
    assert [a[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 2, answers
