"""Real Redis replication for tests: a master with replicas, watched by Sentinels.

:class:`ReplicaGroup` is a master ``redis-server`` and N replicas (``--replicaof``) on
free loopback ports; :class:`Sentinels` is three ``redis-server --sentinel`` processes
monitoring one or more groups, with a short ``down-after-milliseconds`` so that a
failover takes seconds. Everything is waited for with a generous limit, never a sleep.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from .procs import START_LIMIT, RedisServer, free_port, terminate
from .waiting import wait_until_sync

__all__ = ("ReplicaGroup", "SentinelShards", "Sentinels", "two_sentinel_shards")


def _info(port: int) -> dict[str, object] | None:
    """INFO replication of the server on ``port`` (None when it does not answer)."""
    try:
        with redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2) as client:
            return dict(client.info("replication"))
    except (redis.ConnectionError, redis.TimeoutError):
        return None


class ReplicaGroup:
    """A master and ``replicas`` replicas of it, all in sync when the constructor returns."""

    def __init__(self, workdir: Path, name: str, replicas: int = 1) -> None:
        self.name = name
        self.servers = [RedisServer(workdir / name)]
        master = self.servers[0].port
        for _ in range(replicas):
            server = RedisServer(workdir / name, "--replicaof", "127.0.0.1", str(master))
            self.servers.append(server)
        wait_until_sync(self._linked, START_LIMIT, f"the replicas of {name} to be in sync")

    def _linked(self) -> bool:
        master = _info(self.servers[0].port)
        if master is None or master.get("connected_slaves") != len(self.servers) - 1:
            return False
        return all(
            (info := _info(s.port)) is not None and info.get("master_link_status") == "up"
            for s in self.servers[1:]
        )

    def alive(self) -> list[RedisServer]:
        return [s for s in self.servers if s.proc.poll() is None]

    def master(self) -> RedisServer:
        """The live server that says it is a master (after a failover, the promoted one)."""
        for server in self.alive():
            info = _info(server.port)
            if info is not None and info.get("role") == "master":
                return server
        raise AssertionError(f"{self.name}: no live master")

    def synced_master(self, limit: float = START_LIMIT) -> RedisServer:
        """The master, once every live replica has all of its writes so far.

        Writes are paused on it meanwhile (``CLIENT PAUSE WRITE``: clients wait, nothing
        fails), so that killing it then loses nothing that was acknowledged: what a test
        that calls this measures is following the failover, not asynchronous
        replication's loss window (see ``redis.wait_replicas``)."""
        server = self.master()
        with redis.Redis(port=server.port) as client:
            client.execute_command("CLIENT", "PAUSE", int(limit * 1000), "WRITE")

        def caught_up() -> bool:
            master = _info(server.port)
            assert master is not None
            offset = master["master_repl_offset"]
            replicas = [s for s in self.alive() if s is not server]
            return all((_info(s.port) or {}).get("slave_repl_offset") == offset for s in replicas)

        wait_until_sync(caught_up, limit, f"the replicas of {self.name} to catch up")
        return server

    def kill(self, server: RedisServer) -> None:
        """kill -9: no chance to tell anyone."""
        server.proc.kill()
        server.proc.wait()

    def close(self) -> None:
        for server in self.servers:
            server.close()


class Sentinels:
    """``count`` Sentinel processes monitoring ``groups`` (quorum: a majority)."""

    def __init__(
        self,
        workdir: Path,
        groups: list[ReplicaGroup],
        count: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed; run scripts/ensure-system-deps")
        self.groups = groups
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        quorum = count // 2 + 1
        for _ in range(count):
            port = free_port()
            home = workdir / f"sentinel-{port}"
            home.mkdir(parents=True)
            lines = [f"port {port}", "bind 127.0.0.1", f"dir {home}"]
            for group in groups:
                master = group.servers[0].port
                lines += [
                    f"sentinel monitor {group.name} 127.0.0.1 {master} {quorum}",
                    f"sentinel down-after-milliseconds {group.name} {down_after_ms}",
                    f"sentinel failover-timeout {group.name} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {group.name} 1",
                ]
            conf = home / "sentinel.conf"  # Sentinel rewrites it: its own copy
            conf.write_text("\n".join(lines) + "\n")
            log = open(home / "log", "ab")  # noqa: SIM115 - the process owns it until close()
            proc = subprocess.Popen([exe, str(conf), "--sentinel"], stdout=log, stderr=log)
            log.close()
            self.ports.append(port)
            self.procs.append(proc)
        wait_until_sync(self._watching, START_LIMIT, "the sentinels to know each other")

    def _masters(self, port: int) -> dict[str, dict[str, object]] | None:
        try:
            with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as client:
                return dict(client.sentinel_masters())
        except (redis.ConnectionError, redis.TimeoutError):
            return None

    def _watching(self) -> bool:
        """Every sentinel sees every group's master, its replicas and the other sentinels."""
        for port in self.ports:
            masters = self._masters(port)
            if masters is None:
                return False
            for group in self.groups:
                state = masters.get(group.name)
                if state is None or state["num-other-sentinels"] != len(self.ports) - 1:
                    return False
                if state["num-slaves"] != len(group.servers) - 1:
                    return False
        return True

    def url(self, group: ReplicaGroup) -> str:
        """agentd's URL of the group: every sentinel, then the group's name."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+sentinel://{hosts}/{group.name}"

    def master_port(self, group: ReplicaGroup) -> int | None:
        """The master's port, as the first answering sentinel says (None if none does)."""
        for port in self.ports:
            masters = self._masters(port)
            if masters is not None:
                return int(masters[group.name]["port"])  # type: ignore[call-overload]
        return None

    def wait_promotion(self, group: ReplicaGroup, old: RedisServer, limit: float) -> RedisServer:
        """The replica promoted in place of ``old``, once every sentinel names it and it
        says it is a master."""

        def promoted() -> RedisServer | None:
            ports = set()
            for port in self.ports:
                masters = self._masters(port)
                if masters is None:
                    return None
                ports.add(int(masters[group.name]["port"]))  # type: ignore[call-overload]
            if len(ports) != 1 or old.port in ports:
                return None
            new = next(s for s in group.servers if s.port in ports)
            info = _info(new.port)
            return new if info is not None and info.get("role") == "master" else None

        return wait_until_sync(promoted, limit, f"a replica of {group.name} to be promoted")

    def close(self) -> None:
        for proc in self.procs:
            terminate(proc)


@dataclass
class SentinelShards:
    """The shards of agentd's sharded mode as Sentinel groups, and their sentinels."""

    groups: list[ReplicaGroup]
    sentinels: Sentinels

    @property
    def urls(self) -> list[str]:
        return [self.sentinels.url(g) for g in self.groups]


@contextmanager
def two_sentinel_shards(workdir: Path) -> Iterator[SentinelShards]:
    """Two shards, each a Sentinel group of a master and one replica, watched by three
    sentinels (``down-after-milliseconds`` 1000)."""
    groups: list[ReplicaGroup] = []
    sentinels = None
    try:
        groups = [ReplicaGroup(workdir, name) for name in ("shard-a", "shard-b")]
        sentinels = Sentinels(workdir, groups)
        yield SentinelShards(groups, sentinels)
    finally:
        if sentinels is not None:
            sentinels.close()
        for group in groups:
            group.close()
