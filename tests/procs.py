"""Real processes for tests: ``agentd serve`` subprocesses and ``redis-server`` instances.

Everything listens on free loopback ports in a temporary directory; readiness is
polled with a generous limit, never assumed after a fixed sleep.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from .waiting import wait_until_sync

ROOT = Path(__file__).resolve().parent.parent
START_LIMIT = 60.0


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too."""
    rnd = random.Random()
    for _ in range(1000):
        port = rnd.randrange(20000, 50000)
        if _is_free(port) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def http_get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection; returns (status, headers, body)."""
    request = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def http_json(url: str, timeout: float = 10.0) -> tuple[int, Any]:
    status, _, body = http_get(url, timeout)
    return status, json.loads(body)


def fresh_connections() -> aiohttp.ClientSession:
    """An HTTP client that opens a new connection per request, so that requests spread
    over a server's workers (SO_REUSEPORT balances connections, not requests)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


class AgentdProcess:
    """An ``agentd serve`` subprocess with its own config file and log."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        args: list[str],
        env: dict[str, str],
        port: int | None = None,
    ) -> None:
        """``port``: a given one (an instance started again where a balancer expects
        it), else a free one."""
        self.workdir = workdir
        self.config_path = workdir / "agentd.toml"
        self.config_path.write_text(config)
        self.port = port or free_port()
        self.log_path = workdir / f"agentd-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        full_env.pop("AGENTD_SERVER__BIND", None)
        cmd = [sys.executable, "-m", "agentd", "serve", "-c", str(self.config_path)]
        cmd += ["--bind", f"127.0.0.1:{self.port}", *args]
        self.proc = subprocess.Popen(
            cmd, cwd=workdir, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        return http_json(self.url + path, timeout)

    def wait_ready(self, limit: float = START_LIMIT) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"agentd exited with {self.proc.returncode}:\n{self.log()}")
            # The supervisor logs this once every worker accepts (when it would
            # send READY=1 to systemd).
            if "ready: serving with" not in self.log():
                return False
            try:
                return self.get("/readyz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until_sync(ready, limit, "agentd to be ready")

    def info(self) -> dict[str, Any]:
        status, body = self.get("/v1/info")
        assert status == 200, body
        return body

    def worker_pids(self) -> set[int]:
        """The pids of the supervisor's live children (the workers)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return {int(p) for p in children}

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, limit: float = START_LIMIT) -> int:
        try:
            return self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agentd did not exit in {limit}s:\n{self.log()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class RedisServer:
    """A throw-away ``redis-server`` on a free port, in memory only."""

    def __init__(self, workdir: Path, *extra: str, cluster: bool = False) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed; run scripts/ensure-system-deps")
        self.port = free_cluster_port() if cluster else free_port()
        if cluster:
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", *extra)
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), *extra]  # fmt: skip
        self._args = args
        self._log = open(self.dir / "log", "ab")  # noqa: SIM115 - closed in stop()
        self.start()

    def start(self) -> None:
        """Start (again, after :meth:`stop`) on the same port and directory."""
        self.proc = subprocess.Popen(self._args, stdout=self._log, stderr=subprocess.STDOUT)
        wait_until_sync(self._pong, START_LIMIT, f"redis-server on {self.port}")

    def _pong(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited: {(self.dir / 'log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM: redis-server saves its data first when persistence is on."""
        terminate(self.proc)

    def close(self) -> None:
        self.stop()
        self._log.close()


class RedisClusterProcs:
    """A Redis Cluster of ``masters`` nodes (no replicas), created with redis-cli."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = [RedisServer(workdir, cluster=True) for _ in range(masters)]
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed; run scripts/ensure-system-deps")
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until_sync(self._ok, START_LIMIT, "the cluster to report cluster_state:ok")

    def _ok(self) -> bool:
        for node in self.nodes:
            with socket.create_connection(("127.0.0.1", node.port), timeout=2) as s:
                s.sendall(b"CLUSTER INFO\r\n")
                data = b""
                while b"cluster_known_nodes" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if b"cluster_state:ok" not in data:
                    return False
        return True

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def metric(proc: AgentdProcess, sample: str) -> float | None:
    """One sample's value from the instance's /metrics (None when absent)."""
    return metrics(proc, sample)[0]


def metrics(proc: AgentdProcess, *samples: str) -> list[float | None]:
    """Samples' values from one scrape of the instance's /metrics (None when absent):
    one moment's figures, consistent with each other."""
    found: dict[str, float] = {}
    with urllib.request.urlopen(proc.url + "/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name in samples:
                found[name] = float(value)
    return [found.get(sample) for sample in samples]
