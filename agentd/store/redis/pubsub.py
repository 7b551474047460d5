"""Session events over Redis pub/sub: one subscriber connection per Redis server per worker.

A worker may watch thousands of sessions (one per open WebSocket); it never opens a
connection per watcher. Each Redis server that owns watched channels — a shard, or in a
cluster the node owning the channel's slot (sharded pub/sub, ``SSUBSCRIBE``) — gets one
:class:`_Endpoint`: one connection, one reader task, fanning messages out to local feeds.

When that connection drops, the endpoint reconnects with backoff, subscribes again, and
then hands every feed a ``None`` (see :class:`~agentd.store.api.Subscription`): the
watcher reads what it missed from history by sequence number, so no message is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc

from ...errors import StoreUnavailable
from ..api import Subscription
from .outage import Outage
from .sentinel import SentinelGroup
from .shards import UNAVAILABLE_ERRORS, Shards

__all__ = ("EventHub",)

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0
# Seconds between two questions to a Sentinel group's sentinels about its master.
MASTER_CHECK_S = 5.0


class _Feed(Subscription):
    def __init__(self, hub: EventHub, channel: bytes) -> None:
        super().__init__()
        self._hub = hub
        self.channel = channel

    async def close(self) -> None:
        # Shielded: a watcher cancelled while it closes still unsubscribes.
        await asyncio.shield(self._hub.release_soon(self))


class _Endpoint:
    """One pub/sub connection to one Redis server and the channels watched through it."""

    def __init__(self, name: str, connect: Callable[[], aioredis.client.PubSub], sharded: bool,
                 timeout: float, outage: Outage,
                 group: SentinelGroup | None = None) -> None:  # fmt: skip
        """``group``: the shard's Sentinel group, if it is one; a subscription held on a
        server that is no longer its master is moved to the new one."""
        self.name = name
        self._group = group
        self._master_checked = 0.0
        self._outage = outage  # the server's, shared with every other caller of it
        self._connect = connect
        self._sharded = sharded
        self._timeout = timeout
        self.feeds: dict[bytes, set[_Feed]] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._confirm: dict[bytes, asyncio.Future[None]] = {}

    async def _subscribe(self, *channels: bytes) -> None:
        assert self._pubsub is not None
        if self._sharded:
            await self._pubsub.ssubscribe(*channels)
        else:
            await self._pubsub.subscribe(*channels)

    async def add(self, feed: _Feed) -> None:
        feeds = self.feeds.setdefault(feed.channel, set())
        feeds.add(feed)
        if len(feeds) > 1:
            return  # already subscribed on the server
        waiter = asyncio.get_running_loop().create_future()
        self._confirm[feed.channel] = waiter
        try:
            if self._pubsub is None:
                self._pubsub = self._connect()
            await self._subscribe(feed.channel)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read_forever(), name=f"pubsub {self.name}")
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that races the confirmation, leaving a task that cannot be stopped.
            async with asyncio.timeout(self._timeout):
                await asyncio.shield(waiter)
        except (*UNAVAILABLE_ERRORS, rexc.RedisError) as exc:
            feeds.discard(feed)
            if not feeds:
                self.feeds.pop(feed.channel, None)
            raise StoreUnavailable(f"cannot subscribe on {self.name}: {exc}") from exc
        finally:
            self._confirm.pop(feed.channel, None)

    async def remove(self, feed: _Feed) -> None:
        feeds = self.feeds.get(feed.channel)
        if feeds is None:
            return
        feeds.discard(feed)
        if feeds:
            return
        del self.feeds[feed.channel]
        if self._pubsub is not None:
            unsubscribe = self._pubsub.sunsubscribe if self._sharded else self._pubsub.unsubscribe
            # Bounded: a connection busy or half-dead must not hold up a closing watcher
            # (a stale subscription only costs ignored messages until reconnection).
            with contextlib.suppress(*UNAVAILABLE_ERRORS, rexc.RedisError):
                async with asyncio.timeout(self._timeout):
                    await unsubscribe(feed.channel)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        kind = kind.decode() if isinstance(kind, bytes) else kind
        channel = message["channel"]
        if kind in ("message", "smessage"):
            for feed in list(self.feeds.get(channel, ())):
                feed.deliver(message["data"])
        elif kind in ("subscribe", "ssubscribe"):
            waiter = self._confirm.get(channel)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _read_forever(self) -> None:
        backoff = 0.1
        while self.feeds or self._confirm:
            try:
                assert self._pubsub is not None
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._dispatch(message)
                backoff = 0.1
                if await self._on_old_master():
                    log.info("pub/sub connection to %s is on a former master; moving", self.name)
                    await self._reconnect(0.0)
            except asyncio.CancelledError:
                raise
            except (*UNAVAILABLE_ERRORS, rexc.RedisError) as exc:
                log.info("pub/sub connection to %s lost: %s; reconnecting", self.name, exc)
                await self._reconnect(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    async def _on_old_master(self) -> bool:
        """Whether a failover moved the group's master away from this connection's server
        (one that did not drop the connection: a demoted, frozen or cut-off master). The
        worker's other connections tell when they find the new master; the sentinels
        are asked too, every few seconds, for a worker with no other traffic there."""
        if self._group is None:
            return False
        master = self._group.master()
        now = time.monotonic()
        if now - self._master_checked >= MASTER_CHECK_S:
            self._master_checked = now
            with contextlib.suppress(TimeoutError):  # slow sentinels: ask again later
                async with asyncio.timeout(self._timeout * 2):
                    master = await self._group.refresh() or master
        connection = None if self._pubsub is None else self._pubsub.connection
        if master is None or connection is None:
            return False
        return (connection.host, connection.port) != master

    async def _reconnect(self, delay: float) -> None:
        """Reconnect until subscribed again, then tell every feed it may have missed events."""
        while True:
            await asyncio.sleep(delay)
            old, self._pubsub = self._pubsub, None
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.aclose()
            if not self.feeds:
                return
            try:
                self._pubsub = self._connect()
                await self._subscribe(*self.feeds)
            except (*UNAVAILABLE_ERRORS, rexc.RedisError) as exc:
                self._outage.failed(exc)
                delay = min(MAX_BACKOFF, delay * 2)
                continue
            # Not a sign of recovery: a subscription is sent without waiting for its
            # confirmation, and a frozen server's kernel still accepts the connection.
            log.info("pub/sub connection to %s re-established", self.name)
            for feeds in self.feeds.values():
                for feed in feeds:
                    feed.reset()
            return

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None


class EventHub:
    """A worker's session subscriptions, multiplexed over one connection per server."""

    def __init__(self, shards: Shards) -> None:
        self._shards = shards
        self._endpoints: dict[str, _Endpoint] = {}
        self._where: dict[bytes, _Endpoint] = {}
        self._releasing: set[asyncio.Task[None]] = set()
        shards.on_reroute.append(self._reroute)

    def _reroute(self) -> None:
        """A reshard moved channels to another server: move their feeds there, and tell
        each that it may have missed events (its watcher catches up from history)."""
        for channel, endpoint in list(self._where.items()):
            if self._endpoint_for(channel.decode()) is not endpoint:
                for feed in list(endpoint.feeds.get(channel, ())):
                    task = asyncio.ensure_future(self._rehome(feed, endpoint))
                    self._releasing.add(task)
                    task.add_done_callback(self._releasing.discard)

    async def _rehome(self, feed: _Feed, old: _Endpoint) -> None:
        await old.remove(feed)
        endpoint = self._endpoint_for(feed.channel.decode())
        self._where[feed.channel] = endpoint
        for attempt in range(5):
            try:
                await endpoint.add(feed)
                break
            except StoreUnavailable as exc:
                if attempt == 4:
                    log.warning("pub/sub: cannot follow a moved session: %s", exc.message)
                await asyncio.sleep(0.2 * (attempt + 1))  # a busy server: try again
        feed.reset()

    def _endpoint_for(self, channel: str) -> _Endpoint:
        shards = self._shards
        timeout = shards.config.timeout
        if shards.cluster is None:
            name, client, outage, group = shards.server_of(channel)
            if name not in self._endpoints:
                self._endpoints[name] = _Endpoint(name, client.pubsub, False, timeout, outage,
                                                  group)  # fmt: skip
            return self._endpoints[name]
        try:
            node = shards.cluster.get_node_from_key(channel)
        except (*UNAVAILABLE_ERRORS, rexc.RedisClusterException) as exc:
            raise StoreUnavailable(f"redis cluster unavailable: {exc}") from exc
        if node is None:
            raise StoreUnavailable("redis cluster: no node serves this session's slot")
        name = f"cluster node {node.name}"
        if name not in self._endpoints:
            client = aioredis.Redis(
                host=node.host,
                port=node.port,
                socket_connect_timeout=shards.config.connect_timeout,
                socket_timeout=shards.config.timeout,
            )
            self._endpoints[name] = _Endpoint(
                name, client.pubsub, True, timeout, shards.outage(name)
            )
        return self._endpoints[name]

    async def subscribe(self, channel: str) -> Subscription:
        endpoint = self._endpoint_for(channel)
        feed = _Feed(self, channel.encode())
        self._where[feed.channel] = endpoint
        try:
            await endpoint.add(feed)
        except BaseException:
            # Cancelled (or failed) with the SUBSCRIBE perhaps sent: take it back.
            self.release_soon(feed)
            raise
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # A cancellation that arrived while subscribing was absorbed on the way (a
            # subscribe racing its confirmation): honour it, or the caller cannot stop.
            await feed.close()
            raise asyncio.CancelledError
        return feed

    def release_soon(self, feed: _Feed) -> asyncio.Task[None]:
        """Release ``feed`` in a task of its own, which a cancellation of the caller
        does not stop half-way."""
        task = asyncio.ensure_future(self.release(feed))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        return task

    async def release(self, feed: _Feed) -> None:
        endpoint = self._where.get(feed.channel)
        if endpoint is not None:
            await endpoint.remove(feed)
            if feed.channel not in endpoint.feeds:
                self._where.pop(feed.channel, None)

    async def close(self) -> None:
        for endpoint in self._endpoints.values():
            await endpoint.close()
        self._endpoints.clear()
