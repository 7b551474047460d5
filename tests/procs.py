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
import redis

from agentd.fastpath import key_slot

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


# Ports are handed out from a range below the kernel's ephemeral one (32768-60999 by
# default), so no port 0 bind or outgoing connection takes one between the check and the
# server's bind. Under pytest-xdist each worker owns a slice of it: a port is checked
# free, released, and only then bound by the server, and two workers checking the same
# port at once would both find it free. A cluster node's bus port (port + 10000) falls in
# the worker's own slice of the bus range above. Within a slice the first port is
# random, so that two test runs on one machine do not walk the same ports in step.
PORT_RANGE = (10000, 20000)
CLUSTER_BUS_OFFSET = 10000


def _slice() -> range:
    """This process's share of PORT_RANGE: all of it, or one xdist worker's slice."""
    low, high = PORT_RANGE
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count <= 1:
        return range(low, high)
    size = (high - low) // count
    start = low + int(worker[2:]) % count * size
    return range(start, start + size)


class _Ports:
    """Walks this process's slice round, returning ports that are free now."""

    def __init__(self) -> None:
        self.ports = _slice()
        self.next = random.randrange(len(self.ports))

    def take(self, *offsets: int) -> int:
        for _ in range(len(self.ports)):
            port = self.ports[self.next]
            self.next = (self.next + 1) % len(self.ports)
            if all(_is_free(port + offset) for offset in offsets):
                return port
        raise RuntimeError(f"no free port in {self.ports}")


_ports: _Ports | None = None


def _allocator() -> _Ports:
    global _ports
    if _ports is None:  # not at import: xdist sets the worker's variables before tests
        _ports = _Ports()
    return _ports


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free loopback port of this process's own (see PORT_RANGE)."""
    return _allocator().take(0)


def free_cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too."""
    return _allocator().take(0, CLUSTER_BUS_OFFSET)


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


def new_key(proc: AgentdProcess, admin_key: str, timeout: float, **limits: int) -> str:
    """A key of tenant ``acme`` with ``limits``, made through ``proc``'s admin API."""
    request = urllib.request.Request(
        proc.url + "/v1/admin/keys",
        data=json.dumps({"tenant": "acme", "limits": limits}).encode(),
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        key: str = json.loads(reply.read())["key"]
    return key


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
        self._told_to_stop = False

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

    def begin_stop(self) -> None:
        """SIGTERM, without waiting for the exit (:meth:`stop` waits): instances told
        together drain at the same time, not one drain delay after another."""
        if self.proc.poll() is None and not self._told_to_stop:
            self.proc.send_signal(signal.SIGTERM)
            self._told_to_stop = True  # a second SIGTERM would drain at once

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.begin_stop()
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
        # A master syncs a replica at once (diskless sync's default waits 5 s for more).
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--repl-diskless-sync-delay", "0",
                "--dir", str(self.dir), *extra]  # fmt: skip
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
    """A Redis Cluster of ``masters`` nodes, each with ``replicas`` replicas, created with
    redis-cli; ``node_timeout`` (ms) is ``cluster-node-timeout``, how long a master must
    be unreachable before its replica is promoted; ``extra``: more redis-server options."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0,
                 node_timeout: int = 15000, extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        self._served: dict[int, int] = {}  # a slot of each killed master
        extra = ("--cluster-node-timeout", str(node_timeout), *extra)
        count = masters * (1 + replicas)
        self.nodes = [RedisServer(workdir, *extra, cluster=True) for _ in range(count)]
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        self.cli("--cluster", "create", *addrs, "--cluster-replicas", str(replicas),
                 "--cluster-yes", timeout=60)  # fmt: skip
        wait_until_sync(self._ok, START_LIMIT, "the cluster to report cluster_state:ok")
        if replicas:
            wait_until_sync(self._replicas_linked, START_LIMIT, "every replica to be in sync")

    @staticmethod
    def cli(*args: str, timeout: float = 30) -> str:
        """Run redis-cli with ``args``; its standard output (raises if it fails)."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed; run scripts/ensure-system-deps")
        done = subprocess.run([cli, *args], check=True, capture_output=True, timeout=timeout)
        return done.stdout.decode()

    def live(self) -> list[RedisServer]:
        """The nodes whose process runs."""
        return [n for n in self.nodes if n.proc.poll() is None]

    def _ok(self) -> bool:
        for node in self.live():
            try:
                with redis.Redis(port=node.port, socket_timeout=5) as client:
                    info = client.execute_command("CLUSTER INFO")  # parsed to a dict
            except (redis.RedisError, OSError):
                return False
            if info.get("cluster_state") != "ok":
                return False
        return True

    def _replicas_linked(self) -> bool:
        for node in self.live():
            with redis.Redis(port=node.port, socket_timeout=5) as client:
                info = client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def node_on(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def master_of_slot(self, slot: int) -> RedisServer:
        """The node that serves ``slot`` as master, as a live node sees it now."""
        for node in self.live():
            with redis.Redis(port=node.port) as client:
                for start, end, *owners in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return self.node_on(int(owners[0][1]))
        raise AssertionError(f"no node serves slot {slot}")

    def master_of_key(self, key: str) -> RedisServer:
        return self.master_of_slot(key_slot(key))

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The live replicas of ``master``."""
        found = []
        for node in self.live():
            with redis.Redis(port=node.port) as client:
                info = client.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                found.append(node)
        return found

    def kill(self, node: RedisServer) -> None:
        """kill -9: the node dies with whatever it had not replicated."""
        self._served[node.port] = self._a_slot_of(node)  # for wait_promoted()
        node.proc.kill()
        node.proc.wait()

    def wait_promoted(self, dead: RedisServer, limit: float = START_LIMIT) -> RedisServer:
        """Wait until a replica of the killed ``dead`` master serves its slots and the
        cluster is ok again; returns the new master."""
        slot = self._served[dead.port]

        def promoted() -> RedisServer | None:
            try:
                if not self._ok():
                    return None
                owner = self.master_of_slot(slot)
            except (redis.RedisError, AssertionError, OSError):
                return None
            return owner if owner is not dead else None

        return wait_until_sync(promoted, limit, f"a replica of {dead.port} to take over")

    def slots_of(self, node: RedisServer) -> list[int]:
        """The slots ``node`` serves as master, as a live node sees it now."""
        with redis.Redis(port=self.live()[0].port) as client:
            ranges = client.execute_command("CLUSTER SLOTS")
        return [
            slot
            for start, end, *owners in ranges
            if int(owners[0][1]) == node.port
            for slot in range(start, end + 1)
        ]

    def _a_slot_of(self, node: RedisServer) -> int:
        for other in self.live():
            with redis.Redis(port=other.port) as client:
                for start, _end, *owners in client.execute_command("CLUSTER SLOTS"):
                    if int(owners[0][1]) == node.port:
                        return int(start)
        raise AssertionError(f"{node.port} serves no slot")

    def redirections(self) -> dict[str, int]:
        """The error replies of every live node by kind (INFO errorstats): how many
        MOVED, ASK, TRYAGAIN, CLUSTERDOWN... clients were answered."""
        total: dict[str, int] = {}
        for node in self.live():
            with redis.Redis(port=node.port) as client:
                for name, stat in client.info("errorstats").items():
                    kind = name.removeprefix("errorstat_")
                    total[kind] = total.get(kind, 0) + int(stat["count"])
        return total

    def node_id(self, node: RedisServer) -> str:
        with redis.Redis(port=node.port) as client:
            return client.execute_command("CLUSTER MYID").decode()

    def move_slot(self, slot: int, target: RedisServer, batch: int = 10) -> int:
        """Move one slot to ``target`` with keys, the way ``redis-cli --cluster reshard``
        does (SETSLOT IMPORTING / MIGRATING, MIGRATE in batches, SETSLOT NODE); returns
        the number of keys moved."""
        source = self.master_of_slot(slot)
        if source is target:
            return 0
        src = redis.Redis(port=source.port)
        dst = redis.Redis(port=target.port)
        try:
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.node_id(target))
            moved = 0
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
                moved += len(keys)
            for node in self.live():
                with redis.Redis(port=node.port) as client:
                    if client.info("replication").get("role") == "master":
                        client.execute_command(
                            "CLUSTER SETSLOT", slot, "NODE", self.node_id(target)
                        )
        finally:
            src.close()
            dst.close()
        return moved

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
