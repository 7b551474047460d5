from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .procs import AgentdProcess, RedisServer

PROBE = 'plugins = ["tests.plugins.probe:setup"]'


@pytest.fixture
def agentd_instance(tmp_path: Path) -> Iterator[Callable[..., AgentdProcess]]:
    """Start ``agentd serve`` subprocesses; each is stopped at the end of the test.

    ``start(config_text, *args, env={}, ready=True)`` writes ``config_text`` to the
    instance's config file and waits until ``/readyz`` answers 200 (unless told not to).
    """
    started: list[AgentdProcess] = []

    def start(
        config: str = "", *args: str, env: dict[str, str] | None = None, ready: bool = True
    ) -> AgentdProcess:
        workdir = tmp_path / f"agentd{len(started)}"
        workdir.mkdir()
        proc = AgentdProcess(workdir, config, list(args), env or {})
        started.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def redis_cluster_node(tmp_path: Path) -> Iterator[RedisServer]:
    """One redis-server in cluster mode (no slots assigned: enough for CLUSTER KEYSLOT)."""
    server = RedisServer(tmp_path, cluster=True)
    yield server
    server.stop()
