"""Clients that go away, and clients that send garbage, against a real ``agentd serve``.

A client that drops before it was answered is counted with status 499 and logged at
debug, never as an unhandled error; a malformed request is answered 400 and logged as
one rate-limited line, never as a traceback per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.test_utils import TestServer

from agentd.config import from_dict
from agentd.log import MalformedRequests
from agentd.server.app import create_app
from agentd.server.http import HEARTBEAT_S
from agentd.server.keys import METRICS

from .procs import AgentdProcess, http_get, metric
from .waiting import wait_until, wait_until_sync

Start = Callable[..., AgentdProcess]

CONFIG = """
[server]
workers = 1
[sessions]
concurrent_turns = "reject"
[[backends]]
name = "echo"
type = "echo"
tokens_per_s = 20.0
"""

WORDS = " ".join(f"w{i}" for i in range(20))


def _requests(route: str, method: str, status: int) -> str:
    return f'agentd_http_requests_total{{method="{method}",route="{route}",status="{status}"}}'


def _counted(proc: AgentdProcess, route: str, method: str, status: int) -> float:
    return metric(proc, _requests(route, method, status)) or 0.0


def _connect(proc: AgentdProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proc.port), timeout=10)


def _post_head(path: str, framing: str) -> bytes:
    """A POST's head; ``framing`` is its Content-Length or Transfer-Encoding header."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: agentd\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n\r\n"
    ).encode()


def _post(path: str, body: dict[str, Any], close: bool = False) -> bytes:
    data = orjson.dumps(body)
    framing = f"Content-Length: {len(data)}" + ("\r\nConnection: close" if close else "")
    return _post_head(path, framing) + data


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}: {got!r}"
        got += chunk
    return got


def _call(proc: AgentdProcess, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    with _connect(proc) as sock:
        sock.sendall(_post(path, body, close=True))
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload) if payload else None


def _new_session(proc: AgentdProcess) -> str:
    status, body = _call(proc, "/v1/sessions", {})
    assert status == 201, body
    return body["id"]


def _history(proc: AgentdProcess, sid: str) -> list[dict[str, Any]]:
    status, body = proc.get(f"/v1/sessions/{sid}/messages?limit=100")
    assert status == 200, body
    return body["data"]


def _assert_no_error_logged(proc: AgentdProcess) -> None:
    log = proc.log()
    assert "unhandled error" not in log, log
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log


def test_a_body_cut_short_counts_499_and_logs_no_error(agentd_instance: Start) -> None:
    proc = agentd_instance(CONFIG)
    route = "/v1/chat/completions"
    with _connect(proc) as sock:
        sock.sendall(_post_head(route, "Content-Length: 10000") + b'{"model": ')
    with _connect(proc) as sock:
        sock.sendall(_post_head(route, "Transfer-Encoding: chunked") + b'100\r\n{"model"')
    wait_until_sync(lambda: _counted(proc, route, "POST", 499) == 2, what="two 499s")
    assert _counted(proc, route, "POST", 500) == 0
    _assert_no_error_logged(proc)
    # The worker lives on and answers.
    assert http_get(proc.url + "/healthz")[0] == 200


def test_a_stream_whose_reader_left_counts_499_and_frees_the_session(
    agentd_instance: Start,
) -> None:
    proc = agentd_instance(CONFIG)
    sid = _new_session(proc)
    route = "/v1/chat/completions"
    turn = {"model": "echo", "messages": [{"role": "user", "content": WORDS}], "session_id": sid}
    with _connect(proc) as sock:
        sock.sendall(_post(route, {**turn, "stream": True}))
        _read_until(sock, b"data: ")
    wait_until_sync(lambda: _counted(proc, route, "POST", 499) == 1, what="a 499")
    # As before this change: a streamed turn cut off is not stored, and its lease is gone
    # (with concurrent_turns = "reject", a held lease would answer 409 session_busy).
    assert _history(proc, sid) == []
    status, body = _call(proc, route, {**turn, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200, body
    assert [m["content"] for m in _history(proc, sid)] == ["hi", "hi"]

    # A foreground Responses stream whose reader left.
    with _connect(proc) as sock:
        sock.sendall(_post("/v1/responses", {"model": "echo", "input": WORDS, "stream": True}))
        opening = _read_until(sock, b"response.output_text.delta")
    rid = re.search(rb'"id":"(resp_[^"]+)"', opening)
    assert rid is not None, opening
    wait_until_sync(lambda: _counted(proc, "/v1/responses", "POST", 499) == 1, what="a 499")
    # As before: a foreground response whose stream was cut off is not kept.
    assert proc.get(f"/v1/responses/{rid[1].decode()}")[0] == 404

    # An idle event stream whose reader left: noticed within a few seconds (well before
    # its next comment line), so its watcher does not outlive the client.
    events = f"/v1/sessions/{sid}/events"
    with _connect(proc) as sock:
        sock.sendall(f"GET {events} HTTP/1.1\r\nHost: agentd\r\n\r\n".encode())
        _read_until(sock, b"watching")
    wait_until_sync(
        lambda: _counted(proc, "/v1/sessions/{id}/events", "GET", 499) == 1,
        HEARTBEAT_S / 2,
        "the event stream to notice its reader left",
    )
    assert _counted(proc, route, "POST", 500) == 0
    assert _counted(proc, "/v1/responses", "POST", 500) == 0
    _assert_no_error_logged(proc)


def test_a_turn_whose_client_left_before_the_answer_is_stored_and_counts_499(
    agentd_instance: Start,
) -> None:
    proc = agentd_instance(CONFIG)
    sid = _new_session(proc)
    route = "/v1/chat/completions"
    turn = {"model": "echo", "messages": [{"role": "user", "content": WORDS}], "session_id": sid}
    with _connect(proc) as sock:
        sock.sendall(_post(route, turn))
    # The handler is not cancelled: the turn runs to its end and is stored, as before;
    # only its answer has nobody to read it.
    wait_until_sync(lambda: _counted(proc, route, "POST", 499) == 1, what="a 499")
    assert [m["content"] for m in _history(proc, sid)] == [WORDS, WORDS]
    assert _counted(proc, route, "POST", 200) == 0
    _assert_no_error_logged(proc)


def test_malformed_requests_are_answered_400_and_logged_as_a_few_lines(
    agentd_instance: Start,
) -> None:
    proc = agentd_instance(CONFIG)
    pid = proc.info()["worker"]["pid"]
    garbage = [
        b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ]
    for i in range(200):
        with _connect(proc) as sock:
            sock.sendall(garbage[i % len(garbage)])
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.split(b"\r\n", 1)[0].split()[1] == b"400", reply
    # The same worker still serves.
    assert proc.info()["worker"]["pid"] == pid
    log = proc.log()
    lines = [line for line in log.splitlines() if "malformed request" in line]
    assert 1 <= len(lines) <= 5, log
    assert "Traceback" not in log and " ERROR " not in log, log
    assert "INFO" in lines[0] and "answered 400" in lines[0], lines


def test_malformed_request_lines_are_rate_limited_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.server")
    now = [100.0]
    limit = MalformedRequests(every_s=10.0, clock=lambda: now[0])

    def record(exc: BaseException | None) -> logging.LogRecord:
        return logging.getLogger("aiohttp.server").makeRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, MalformedRequests.MESSAGE,
            ("10.0.0.1",), (type(exc), exc, None) if exc else None,
        )  # fmt: skip

    bad = BadHttpMessage("Invalid header token:\n  b'x y'")
    first = record(bad)
    assert limit.filter(first)
    assert (first.levelname, first.exc_info) == ("INFO", None)
    assert first.getMessage() == "malformed request from 10.0.0.1 answered 400: " + (
        "Invalid header token: b'x y'"
    )
    assert [limit.filter(record(bad)) for _ in range(7)] == [False] * 7
    now[0] += 10.0
    later = record(bad)
    assert limit.filter(later)
    assert later.getMessage().endswith("(7 more since the last such line)")
    # Anything else on that logger passes untouched, a server error with its traceback.
    other = record(RuntimeError("boom"))
    assert limit.filter(other) and other.levelno == logging.ERROR and other.exc_info


class _Hang:
    """A route that waits until cancelled, remembering its request and task."""

    def __init__(self) -> None:
        self.request: web.Request | None = None
        self.task: asyncio.Task[Any] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.request, self.task = request, asyncio.current_task()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def _cancel_hanging_request(client_leaves: bool) -> str:
    """Cancel a handler while its client waits (or after it left); return /metrics."""
    app = create_app(from_dict({}))
    hang = _Hang()
    app.router.add_get("/test/hang", hang.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /test/hang HTTP/1.1\r\nHost: agentd\r\n\r\n")
        await wait_until(lambda: hang.task is not None, what="the handler to start")
        assert hang.request is not None and hang.task is not None
        if client_leaves:
            writer.close()
            await wait_until(lambda: hang.request.transport is None, what="the disconnect")
        hang.task.cancel()
        await wait_until(hang.task.done, what="the handler to end")
        # The middleware counted it and let the cancellation through.
        assert hang.task.cancelled()
        writer.close()
        return app[METRICS].render().decode()
    finally:
        await server.close()


async def test_a_cancelled_handler_is_counted_and_stays_cancelled() -> None:
    text = await _cancel_hanging_request(client_leaves=True)
    assert _requests("/test/hang", "GET", 499) + " 1.0" in text, text
    text = await _cancel_hanging_request(client_leaves=False)
    assert _requests("/test/hang", "GET", 503) + " 1.0" in text, text
