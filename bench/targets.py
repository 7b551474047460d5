"""The servers under load: agentd and the baselines, each pinned to its CPUs.

Every target listens on a free loopback port, logs into the run's work directory, is
started under ``taskset`` (so its workers inherit the pinning) and is stopped by the
context manager that started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.procs import ROOT, RedisServer, free_port, http_get

from .procstat import tree

__all__ = (
    "Target",
    "agentd",
    "aiohttp_baseline",
    "fastapi_baseline",
    "mcp_tools",
    "nginx",
    "redis",
    "start",
    "upstream",
)

START_LIMIT = 30.0
BASELINES = "bench.baselines"


@dataclass
class Target:
    """A running server: its name in the results, its command, and its process tree."""

    name: str
    command: list[str]
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    notes: list[str] = field(default_factory=list)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc.poll() is None else []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pinned(command: list[str], cpus: list[int]) -> list[str]:
    """``command`` run under ``taskset`` on ``cpus`` (unchanged when there is no taskset)."""
    if not cpus or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", ",".join(map(str, cpus)), *command]


def agentd_root() -> Path:
    """The agentd checkout under test: ``BENCH_AGENTD_ROOT`` (``--agentd-root``) or this one."""
    return Path(os.environ.get("BENCH_AGENTD_ROOT") or ROOT).resolve()


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # The benchmark's config is the whole config: no AGENTD_ variable of the caller's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    return {**env, "PYTHONPATH": str(ROOT), **(extra or {})}


@contextlib.contextmanager
def start(
    name: str,
    command: list[str],
    cpus: list[int],
    workdir: Path,
    port: int,
    ready_path: str,
    log_line: str = "",
    env: dict[str, str] | None = None,
    limit: float = START_LIMIT,
) -> Iterator[Target]:
    """Start ``command`` pinned to ``cpus``; yield it once ``ready_path`` answers 200 (and
    ``log_line`` is in its log), within ``limit`` seconds; stop it on the way out."""
    log_path = workdir / f"{name}-{port}.log"
    full = pinned(command, cpus)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            full, cwd=workdir, env=_env(env), stdout=log, stderr=subprocess.STDOUT
        )
    target = Target(name, full, proc, port, log_path)
    try:
        deadline = time.monotonic() + limit
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{target.log()}")
            if not log_line or log_line in target.log():
                with contextlib.suppress(OSError):
                    if http_get(target.url(ready_path), timeout=2)[0] == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not ready within {limit:g}s:\n{target.log()}")
            time.sleep(0.05)
        yield target
    finally:
        target.stop()


AGENTD_CONFIG = """\
[server]
workers = {workers}
max_inflight_turns = 100000
[log]
level = "info"
{redis}
[[backends]]
name = "echo"
type = "{backend_type}"
urls = {urls}
latency_ms = 0.0
tokens_per_s = 0.0
max_connections = 100
[[agents]]
name = "echo"
backend = "echo"
"""


def agentd(
    workdir: Path,
    cpus: list[int],
    workers: int = 1,
    redis_url: str | None = None,
    upstream_url: str | None = None,
    name: str = "agentd",
    extra_config: str = "",
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> contextlib.AbstractContextManager[Target]:
    """``agentd serve`` with the echo agent (or an ``openai`` backend at ``upstream_url``);
    ``extra_config`` is appended to its TOML, ``args`` to its command line and ``env``
    to its environment."""
    port = free_port()
    config = AGENTD_CONFIG.format(
        workers=workers,
        redis=f'[redis]\nurls = ["{redis_url}"]' if redis_url else "",
        backend_type="openai" if upstream_url else "echo",
        urls=f'["{upstream_url}"]' if upstream_url else "[]",
    )
    path = workdir / f"agentd-{port}.toml"
    path.write_text(config + extra_config)
    command = [sys.executable, "-m", "agentd", "serve", "-c", str(path)]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers), *args]
    env = {"PYTHONPATH": str(agentd_root()), **(env or {})}
    return start(name, command, cpus, workdir, port, "/readyz", "ready: serving with", env=env)


NGINX_CONFIG = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 20000; }}
worker_rlimit_nofile 20000;
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        default_type application/json;
        location / {{ return 200 '{{"status":"ok"}}'; }}
    }}
}}
"""


def nginx(workdir: Path, cpus: list[int]) -> contextlib.AbstractContextManager[Target]:
    """nginx, one worker, ``return 200`` for every path: the native ceiling."""
    port = free_port()
    folder = workdir / f"nginx-{port}"
    folder.mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONFIG.format(dir=folder, port=port))
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    command = [exe, "-c", str(conf), "-p", str(folder), "-e", str(folder / "nginx-error.log")]
    return start("nginx", command, cpus, workdir, port, "/healthz")


def aiohttp_baseline(
    workdir: Path, cpus: list[int], processes: int = 1, name: str = "aiohttp"
) -> contextlib.AbstractContextManager[Target]:
    """A bare aiohttp handler returning a fixed body: the framework ceiling. With
    ``processes`` > 1, that many processes share the port (a ``SO_REUSEPORT`` socket each,
    as agentd's workers do)."""
    port = free_port()
    command = [sys.executable, "-m", f"{BASELINES}.aiohttp_app", "--port", str(port)]
    if processes > 1:
        command += ["--processes", str(processes)]
    return start(name, command, cpus, workdir, port, "/healthz")


def fastapi_baseline(
    workdir: Path, cpus: list[int], redis_url: str | None = None
) -> contextlib.AbstractContextManager[Target]:
    """The cached chat endpoint written the common way: FastAPI + pydantic on uvicorn."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        f"{BASELINES}.fastapi_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    env = {"BENCH_REDIS_URL": redis_url} if redis_url else None
    return start("fastapi", command, cpus, workdir, port, "/healthz", env=env)


def upstream(workdir: Path, cpus: list[int]) -> contextlib.AbstractContextManager[Target]:
    """An OpenAI-compatible model stub (aiohttp) that streams a fixed reply at once."""
    port = free_port()
    command = [sys.executable, "-m", f"{BASELINES}.upstream", "--port", str(port)]
    return start("upstream", command, cpus, workdir, port, "/healthz")


def mcp_tools(workdir: Path, cpus: list[int]) -> contextlib.AbstractContextManager[Target]:
    """An MCP tool server (the ``mcp`` SDK's MCPServer, streamable HTTP at ``/mcp``) with
    one tool, ``echo``."""
    port = free_port()
    command = [sys.executable, "-m", f"{BASELINES}.mcp_tools", "--port", str(port)]
    return start("mcp-tools", command, cpus, workdir, port, "/healthz")


@contextlib.contextmanager
def redis(workdir: Path, cpus: list[int]) -> Iterator[RedisServer]:
    """A throw-away redis-server on a free port, pinned with the server under test."""
    server = RedisServer(workdir)
    try:
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(server.proc.pid, set(cpus))
        yield server
    finally:
        server.close()
