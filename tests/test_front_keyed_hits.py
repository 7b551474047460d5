"""A keyed cache hit the front answers from its caller's allowance (docs/auth.md,
"Allowances"): over a real ``agentd serve`` on a real Redis, each hit is counted in the
key's usage and in ``x-ratelimit-remaining-requests``, and once the key's requests
limit is spent the next request is refused with OpenAI's 429."""

from __future__ import annotations

import itertools
import json
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from .procs import AgentdProcess, RedisServer, new_key
from .waiting import wait_until_sync

pytestmark = pytest.mark.slow

ADMIN_KEY = "sk-admin-" + "h" * 40
LIMIT_S = 30.0
# The smallest requests limit the workers lease (agentd.auth.leases.MIN_LIMIT): below it
# every request is checked by Redis and no allowance is taken.
RPM = 4000
# Requests sent at once on one connection, and at most this many in all.
BATCH, MOST = 500, 12_000


def _config(redis_server: RedisServer) -> str:
    return f"""
[server]
workers = 1
[redis]
urls = ["{redis_server.url}"]
[auth]
mode = "keys"
[[backends]]
name = "echo"
type = "echo"
[[agents]]
name = "echo"
"""


def _request(body: bytes, key: str) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: agentd\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + key.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class Answers:
    """HTTP/1.1 answers read off one keep-alive connection, in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=LIMIT_S)
        self.data = b""

    def exchange(self, request: bytes, count: int) -> list[tuple[int, dict[str, str], bytes]]:
        self.sock.sendall(request * count)
        return [self._one() for _ in range(count)]

    def _one(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.data:
            self._fill()
        head, self.data = self.data.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.data) < length:
            self._fill()
        body, self.data = self.data[:length], self.data[length:]
        return int(status_line.split()[1]), headers, body

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        assert chunk, "connection closed"
        self.data += chunk

    def close(self) -> None:
        self.sock.close()


def _usage(proc: AgentdProcess, key: str) -> dict[str, Any]:
    request = urllib.request.Request(
        proc.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=LIMIT_S) as reply:
        return json.loads(reply.read())["totals"]  # type: ignore[no-any-return]


def test_keyed_cache_hits_are_counted_and_refused_once_the_limit_is_spent(
    agentd_instance: Callable[..., AgentdProcess], redis_standalone: RedisServer
) -> None:
    proc = agentd_instance(_config(redis_standalone), env={"AGENTD_ADMIN_KEY": ADMIN_KEY})
    key = new_key(proc, ADMIN_KEY, LIMIT_S, requests_per_minute=RPM)
    # A body no earlier request sent (cached: temperature 0): its first answer is the
    # cache's only miss.
    content = f"hello {uuid.uuid4().hex}"
    messages = [{"role": "user", "content": content}]
    body = json.dumps({"model": "echo", "messages": messages, "temperature": 0})
    request = _request(body.encode(), key)
    answers = Answers(proc.port)
    got: list[tuple[int, dict[str, str], bytes]] = []
    started = time.monotonic()
    try:
        while len(got) < MOST and not any(status == 429 for status, _, _ in got):
            got.extend(answers.exchange(request, BATCH))
    finally:
        answers.close()
    elapsed = time.monotonic() - started
    ok = [headers for status, headers, _ in got if status == 200]
    refused = [(headers, body) for status, headers, body in got if status == 429]
    assert len(ok) + len(refused) == len(got), {status for status, _, _ in got}
    assert refused, "the limit was never spent"
    # A burst of RPM from a full bucket, less what the leases held unused (2/1000 of
    # RPM), plus what the bucket refilled while the burst ran.
    assert RPM - 8 <= len(ok) <= RPM + RPM * (elapsed + 1) / 60, (len(ok), elapsed)
    for headers, body in refused:
        assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
        assert int(headers["retry-after"]) >= 1
    assert [h["x-cache"] for h in ok[1:]] == ["hit-l1"] * (len(ok) - 1)
    # Down by one per request of one allowance; where the next allowance (or a request
    # Redis checked) begins, it says where the lease stood (docs/auth.md, "Allowances").
    remaining = [int(h["x-ratelimit-remaining-requests"]) for h in ok]
    steps = [b - a for a, b in itertools.pairwise(remaining)]
    assert steps.count(-1) >= 0.5 * len(steps), steps
    assert all(
        later < earlier for earlier, later in zip(remaining, remaining[10:], strict=False)
    ), remaining
    assert remaining[-1] <= 8, remaining[-8:]

    def counted() -> dict[str, Any] | None:
        totals = _usage(proc, key)
        return totals if totals["requests"] == len(ok) else None

    totals = wait_until_sync(counted, LIMIT_S, what="the hits to be counted")
    assert totals["cache_hits"] == len(ok) - 1
