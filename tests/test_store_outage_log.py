"""A Redis outage is two lines per worker in the log, not one per failed call.

While a shard is down every request, job-queue reader and pub/sub reconnect attempt
fails; each used to log a warning (about 180 for 11 s with two workers). Now the first
failure of an outage is logged, the rest are counted, and the recovery says how many.
"""

from __future__ import annotations

import re
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .procs import AgentdProcess, RedisServer, http_get
from .waiting import wait_until_sync

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]
FAILED_REQUESTS = 20


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: it is stopped and started again."""
    server = RedisServer(tmp_path / "own-redis")
    yield server
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)
    server.close()


def _create_session(url: str) -> int:
    request = urllib.request.Request(url + "/v1/sessions", data=b"{}", method="POST",
                                     headers={"Connection": "close"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line]


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_an_outage_is_logged_once_per_worker_and_its_end_once_with_a_count(
    agentd_instance: Start, own_redis: RedisServer, how: str
) -> None:
    proc = agentd_instance(f'[server]\nworkers = 2\n[redis]\nurls = ["{own_redis.url}"]\n')
    before = len(_warnings(proc.log()))
    shard = f"shard 0 ({own_redis.url})"

    if how == "killed":
        own_redis.stop()
    else:
        own_redis.proc.send_signal(signal.SIGSTOP)
    # Many failed calls in each worker: requests, and the job readers polling meanwhile.
    statuses = [_create_session(proc.url) for _ in range(FAILED_REQUESTS)]
    assert statuses.count(503) == FAILED_REQUESTS, statuses
    assert http_get(proc.url + "/readyz")[0] == 503
    down = re.compile(rf"\[(\d):\d+\] .*{re.escape(shard)} unreachable: ")
    wait_until_sync(lambda: {m.group(1) for m in down.finditer(proc.log())} == {"0", "1"},
                    60, "both workers to log the outage")  # fmt: skip

    if how == "killed":
        own_redis.start()
    else:
        own_redis.proc.send_signal(signal.SIGCONT)
    up = re.compile(rf"\[(\d):\d+\] .*{re.escape(shard)} answers again after [0-9.]+s; "
                    r"(\d+) call\(s\) failed meanwhile")  # fmt: skip
    ends = wait_until_sync(
        lambda: (found := up.findall(proc.log())) and {w for w, _ in found} == {"0", "1"} and found,
        60,
        "both workers to log the recovery",
    )
    # A worker fails a shard fast for up to redis.down_retry after its last failure.
    wait_until_sync(lambda: _create_session(proc.url) == 201, 60, "sessions to be created")
    wait_until_sync(lambda: http_get(proc.url + "/readyz")[0] == 200, 60, "ready again")

    warnings = _warnings(proc.log())[before:]
    assert len(warnings) == 4, "\n".join(warnings)  # per worker: the outage, its end
    assert sum(int(count) for _, count in ends) >= FAILED_REQUESTS
