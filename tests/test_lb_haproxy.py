"""agentd behind a real HAProxy running deploy/haproxy/haproxy.cfg (only the addresses
filled in), in front of three real instances on one Redis, under a mixed load: kill -9
of one instance, SIGTERM of one, a rolling restart of all three
(tests/lb_scenarios.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from . import lb, lb_scenarios
from .procs import RedisServer, free_port

pytestmark = pytest.mark.slow


def test_the_shipped_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    for session_hash in (False, True):
        config = tmp_path / "haproxy.cfg"
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(5)]
        config.write_text(lb.render_haproxy(free_port(), free_port(), addresses, session_hash))
        done = subprocess.run(
            [exe, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "WARNING" not in done.stdout + done.stderr, done.stdout + done.stderr
        text = config.read_text()
        assert all(f"server agentd{n + 1} {a}\n" in text for n, a in enumerate(addresses))
        assert ("\n    balance hdr(X-Session-Id)" in text) == session_hash


async def test_kill_9_of_one_instance_behind_haproxy(
    tmp_path: Path, redis_standalone: RedisServer
) -> None:
    await lb_scenarios.kill_9_one_instance(lb.HAProxy, tmp_path, redis_standalone.url)


async def test_sigterm_of_one_instance_behind_haproxy(
    tmp_path: Path, redis_standalone: RedisServer
) -> None:
    await lb_scenarios.sigterm_one_instance(lb.HAProxy, tmp_path, redis_standalone.url)


async def test_rolling_restart_behind_haproxy(
    tmp_path: Path, redis_standalone: RedisServer
) -> None:
    await lb_scenarios.rolling_restart(lb.HAProxy, tmp_path, redis_standalone.url)
