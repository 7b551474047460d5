"""A Redis master with one replica (``--replicaof``), and a Redis Cluster whose masters
have one replica each, for durable acknowledgements.

The replica can be paused (SIGSTOP: it stops reading its replication stream, so the
master's WAIT times out) and resumed; the master can be killed (-9) and the replica
promoted (``REPLICAOF NO ONE``), as an operator or a Sentinel would.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import redis

from .procs import START_LIMIT, RedisClusterProcs, RedisServer
from .waiting import wait_until_sync

__all__ = ("ReplicatedCluster", "ReplicatedRedis")


class ReplicatedRedis:
    """A master and one replica, each a ``redis-server`` on a free loopback port."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        """``extra``: more redis-server arguments for both (``--appendonly yes``)."""
        self.master = RedisServer(workdir, *extra)
        self.replica = RedisServer(
            workdir, "--replicaof", "127.0.0.1", str(self.master.port), "--repl-diskless-load",
            "on-empty-db", *extra,
        )  # fmt: skip
        self.paused = False
        wait_until_sync(self._linked, START_LIMIT, "the replica to be in sync with its master")

    def client(self, server: RedisServer) -> redis.Redis:
        return redis.Redis(port=server.port, socket_timeout=10)

    def _linked(self) -> bool:
        """The replica is online and confirms a write (its first acknowledgement after
        the initial sync can take a second)."""
        with self.client(self.replica) as replica, self.client(self.master) as master:
            if replica.info("replication").get("master_link_status") != "up":
                return False
            probe = master.pipeline(transaction=False)
            probe.set("waitrepl:probe", 1)
            probe.execute_command("WAIT", 1, 100)
            return probe.execute()[1] == 1

    def pause_replica(self) -> None:
        """SIGSTOP the replica: it confirms nothing until :meth:`resume_replica`."""
        os.kill(self.replica.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume_replica(self) -> None:
        os.kill(self.replica.proc.pid, signal.SIGCONT)
        self.paused = False

    def kill_master(self) -> None:
        """kill -9: whatever the master had not sent to its replica is gone."""
        self.master.proc.kill()
        self.master.proc.wait()

    def promote_replica(self) -> None:
        """``REPLICAOF NO ONE``: the replica becomes a master with what it has."""
        with self.client(self.replica) as replica:
            replica.execute_command("REPLICAOF", "NO", "ONE")

    def close(self) -> None:
        if self.paused:
            self.resume_replica()
        self.replica.close()
        self.master.close()


class ReplicatedCluster(RedisClusterProcs):
    """A Redis Cluster of 3 masters, each with one replica, that starts with every
    replica caught up with its master."""

    def __init__(
        self,
        workdir: Path,
        masters: int = 3,
        node_timeout: int = 15000,
        extra: tuple[str, ...] = (),
    ) -> None:
        """``node_timeout``, ``extra``: as for :class:`RedisClusterProcs`."""
        super().__init__(workdir, masters, replicas=1, node_timeout=node_timeout, extra=extra)
        wait_until_sync(self._caught_up, START_LIMIT, "every master to have its replica in sync")

    def roles(self) -> tuple[list[RedisServer], list[RedisServer]]:
        """(masters, replicas), as the nodes say now."""
        masters, replicas = [], []
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                role = client.info("replication")["role"]
            (masters if role == "master" else replicas).append(node)
        return masters, replicas

    def _caught_up(self) -> bool:
        masters, replicas = self.roles()
        if len(masters) != len(replicas):
            return False
        for node in masters:
            with redis.Redis(port=node.port) as client:
                replication = client.info("replication")
            replica = replication.get("slave0") or {}
            # Online, and it acknowledged the master's whole stream (its first
            # acknowledgement after the sync can take a second).
            if replica.get("state") != "online":
                return False
            if replica.get("offset") != replication["master_repl_offset"]:
                return False
        return True
