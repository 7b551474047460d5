"""Durable acknowledgements (``redis.wait_replicas``): a write agentd acknowledges is
sent with ``WAIT`` (or ``WAITAOF``) right behind it, on the same connection and in the
same round trip, so its answer comes only once that many replicas have the write.

``WAIT`` counts the replicas that have every write its connection made so far, which is
why it must ride on the write's own connection: a pipeline of the two (never a
transaction: ``WAIT`` is refused inside ``MULTI``). In a Redis Cluster both commands are
sent to the node that owns the key's slot, as one cluster pipeline (one connection of
that node); a redirection (``MOVED``, ``ASK``) means the write did not run there, so the
pair is sent again to the node named.

Fewer confirmations than asked within ``redis.wait_timeout_ms`` raise
:class:`~agentd.errors.StoreNotDurable` (503 ``store_not_durable``): the master applied
the write and keeps it, but agentd does not say it is durable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis import exceptions as rexc

from ...config import RedisConfig
from ...errors import StoreNotDurable

__all__ = ("Acks", "send_with_wait")

log = logging.getLogger(__name__)

# Redirections followed for one write while its slot moves, before giving up (503).
MAX_REDIRECTS = 5

# At most one warning per server this often; the ones left out are counted in the next.
LOG_EVERY_S = 10.0


class Acks:
    """What a durable acknowledgement waits for, and the verdict on a wait's reply."""

    def __init__(self, config: RedisConfig) -> None:
        self.replicas = config.wait_replicas
        self.timeout_ms = config.wait_timeout_ms
        self.aof = config.wait_aof
        self.local = 1 if config.wait_local_aof else 0
        self.enabled = self.replicas > 0 or self.local > 0
        # Counts each wait's outcome (set by the worker to its metrics): confirmed,
        # timed_out (fewer in time), refused (the server refused the wait itself: WAITAOF
        # on Redis < 7.2, or with numlocal on a master without AOF).
        self.observe: Callable[[str], None] = _ignore
        self._logged: dict[str, tuple[float, int]] = {}

    def command(self) -> tuple[Any, ...]:
        """The wait that follows an acknowledged write."""
        if self.aof:
            return ("WAITAOF", self.local, self.replicas, self.timeout_ms)
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, reply: Any, server: str) -> None:
        """Return if ``reply`` (the wait's) confirms enough; else count, log and raise
        :class:`StoreNotDurable`."""
        if isinstance(reply, rexc.ResponseError):
            self.observe("refused")
            why = f"{server} refused {self.command()[0]}: {reply}"
            if self.aof and "unknown command" in str(reply).lower():
                why += " (WAITAOF needs Redis >= 7.2; or set redis.wait_aof = false)"
            self._warn(server, why)
            raise StoreNotDurable(f"the write is applied but not confirmed durable: {why}")
        if self.aof:
            local, replicas = int(reply[0]), int(reply[1])
        else:
            local, replicas = self.local, int(reply)
        if replicas >= self.replicas and local >= self.local:
            self.observe("confirmed")
            return
        self.observe("timed_out")
        what = f"{replicas} of {self.replicas} replica(s)"
        if self.local:
            what += f" and {'the' if local else 'not the'} master's own AOF"
        why = f"{server}: {what} confirmed the write within {self.timeout_ms} ms"
        self._warn(server, why)
        raise StoreNotDurable(
            f"the write is applied on the Redis master but not confirmed durable: {why}",
            retry_after=1,
        )

    def _warn(self, server: str, why: str) -> None:
        now = time.monotonic()
        last, skipped = self._logged.get(server, (0.0, 0))
        if last and now - last < LOG_EVERY_S:
            self._logged[server] = (last, skipped + 1)
            return
        more = f" ({skipped} more since the last such line)" if skipped else ""
        log.warning("write not confirmed durable: %s%s", why, more)
        self._logged[server] = (now, 0)


def _ignore(outcome: str) -> None:
    pass


async def send_with_wait(
    client: Any, key: str, write: tuple[Any, ...], wait: tuple[Any, ...], clustered: bool
) -> list[Any]:
    """Send ``write`` then ``wait`` in one round trip on one connection (of the node that
    owns ``key``'s slot, in a cluster); their replies, errors as values."""
    if not clustered:
        pipe = client.pipeline(transaction=False)
        pipe.execute_command(*write)
        pipe.execute_command(*wait)
        return list(await pipe.execute(raise_on_error=False))
    if getattr(client, "_initialize", False):
        await client.initialize()
    node = client.get_node_from_key(key)
    asking = False
    for _ in range(MAX_REDIRECTS):
        pipe = client.pipeline()
        if asking:
            pipe.execute_command("ASKING", target_nodes=node)
        pipe.execute_command(*write, target_nodes=node)
        pipe.execute_command(*wait, target_nodes=node)
        replies = list(await pipe.execute(raise_on_error=False, allow_redirections=False))
        replies = replies[1:] if asking else replies
        first = replies[0]
        if isinstance(first, rexc.MovedError):
            # The slot has a new owner (failover, resharding): not written here.
            await client.nodes_manager.move_slot(first)
            node, asking = client.get_node_from_key(key), False
        elif isinstance(first, rexc.AskError):
            # The slot is migrating and the key is already on the target: ask it there.
            target = client.get_node(host=first.host, port=first.port)
            if target is None:
                raise first
            node, asking = target, True
        else:
            return replies
    # Not run anywhere: as redis-py's own "TTL exhausted", retried while the slot moves.
    raise rexc.ClusterError(f"too many redirections for {key!r}")
