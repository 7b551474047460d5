"""One instance per address: a second ``agentd serve`` refuses a port that is taken.

``SO_REUSEPORT`` lets any process of the same user join a port, so without a check a
second instance would silently share the first one's port (and split its clients
between two different in-memory states).
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator

import pytest

from .conftest import PROBE
from .procs import AgentdProcess, RedisServer
from .waiting import wait_until_sync

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]

CONFIG = f"""
[server]
workers = 2
{PROBE}
[redis]
urls = ["{{redis}}"]
"""


@pytest.fixture
def cfg(redis_standalone: RedisServer) -> str:
    return CONFIG.replace("{redis}", redis_standalone.url)


def _refused(proc: AgentdProcess, port: int) -> None:
    assert proc.wait_exit(60) != 0
    log = proc.log()
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in log, log
    assert "Traceback" not in log, log


def test_a_second_instance_refuses_the_first_ones_port_and_the_first_serves_on(
    agentd_instance: Start, cfg: str
) -> None:
    first = agentd_instance(cfg)
    workers = first.worker_pids()
    second = agentd_instance(cfg, "--bind", f"127.0.0.1:{first.port}", ready=False)
    _refused(second, first.port)
    # Every connection still lands on the first instance's workers.
    answered = {first.info()["worker"]["pid"] for _ in range(20)}
    assert answered <= workers

    # The first instance's own reloads (more workers: more SO_REUSEPORT sockets on the
    # same port) are not refused.
    first.config_path.write_text(cfg.replace("workers = 2", "workers = 3"))
    first.send(signal.SIGHUP)
    done = "reload complete: generation 2 serving"
    wait_until_sync(lambda: done in first.log(), 60, done)
    wait_until_sync(lambda: len(first.worker_pids()) == 3, 60, "three workers")
    assert first.info()["workers"] == 3


@pytest.fixture(params=["reuse_port", "plain"])
def foreign_listener(request: pytest.FixtureRequest) -> Iterator[int]:
    """Another program listening on a port: with SO_REUSEPORT (as an agentd that does not
    check would) or without."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if request.param == "reuse_port":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_a_port_another_program_listens_on_is_refused(
    agentd_instance: Start, foreign_listener: int
) -> None:
    proc = agentd_instance("", "--bind", f"127.0.0.1:{foreign_listener}", ready=False)
    _refused(proc, foreign_listener)
