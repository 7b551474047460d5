"""agentd behind a real nginx running deploy/nginx/agentd.conf (only the addresses
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


def test_the_shipped_config_is_valid_for_nginx(tmp_path: Path) -> None:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    for session_hash in (False, True):
        conf = tmp_path / "agentd.conf"
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(5)]
        conf.write_text(lb.render_nginx(free_port(), addresses, session_hash))
        (tmp_path / "nginx.conf").write_text(lb.NGINX_MAIN.format(dir=tmp_path))
        done = subprocess.run(
            [exe, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
             "-e", str(tmp_path / "error.log")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        text = conf.read_text()
        assert all(f"server {a} max_fails=1" in text for a in addresses)
        assert ("\n    hash $http_x_session_id consistent;" in text) == session_hash


async def test_kill_9_of_one_instance_behind_nginx(
    tmp_path: Path, redis_standalone: RedisServer
) -> None:
    await lb_scenarios.kill_9_one_instance(lb.Nginx, tmp_path, redis_standalone.url)


async def test_sigterm_of_one_instance_behind_nginx(
    tmp_path: Path, redis_standalone: RedisServer
) -> None:
    await lb_scenarios.sigterm_one_instance(lb.Nginx, tmp_path, redis_standalone.url)


async def test_rolling_restart_behind_nginx(tmp_path: Path, redis_standalone: RedisServer) -> None:
    await lb_scenarios.rolling_restart(lb.Nginx, tmp_path, redis_standalone.url)
