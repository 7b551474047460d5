"""Session events over Redis pub/sub: one subscriber connection per Redis server per worker.

A worker may watch thousands of sessions (one per open WebSocket); it never opens a
connection per watcher. Each Redis server that owns watched channels — a shard, or in a
cluster the node owning the channel's slot (sharded pub/sub, ``SSUBSCRIBE``) — gets one
:class:`_Endpoint`: one connection, one reader task, fanning messages out to local feeds.

When that connection drops, the endpoint reconnects with backoff, subscribes again, and
then hands every feed a ``None`` (see :class:`~agentd.store.api.Subscription`): the
watcher reads what it missed from history by sequence number, so no message is lost.

In a cluster a channel's slot can change owner: a failover (the node's connection drops)
or a live slot migration (the node, losing the slot, unsubscribes its subscribers with an
``sunsubscribe`` push). Either way the endpoint hands the channels back to the hub, which
refreshes the slot map and subscribes them on their owner now, retrying with backoff
until one serves the slot; each feed gets its ``None`` once the new subscription is
confirmed, so the catch-up from history starts after live delivery resumed.
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
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...errors import StoreUnavailable
from ..api import Subscription
from .idle import POOL_OPTIONS
from .outage import Outage
from .sentinel import SentinelGroup
from .shards import UNAVAILABLE_ERRORS, Shards

__all__ = ("EventHub",)

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0
# Seconds between two questions to a Sentinel group's sentinels about its master.
MASTER_CHECK_S = 5.0
# A channel whose slot changed owner is retried sooner: a failover ends within
# cluster-node-timeout plus an election, and watchers are waiting.
RELOCATE_BACKOFF = 0.5

# Channels taken from an endpoint, with the feeds that watch each.
Moved = dict[bytes, set["_Feed"]]


class _Feed(Subscription):
    __slots__ = ("_hub", "channel", "closed")

    def __init__(self, hub: EventHub, channel: bytes) -> None:
        super().__init__()
        self._hub = hub
        self.channel = channel
        self.closed = False

    async def close(self) -> None:
        self.closed = True  # a relocation in flight drops it
        # Shielded: a watcher cancelled while it closes still unsubscribes.
        await asyncio.shield(self._hub.release_soon(self))


class _Endpoint:
    """One pub/sub connection to one Redis server and the channels watched through it."""

    def __init__(self, name: str, connect: Callable[[], aioredis.client.PubSub], sharded: bool,
                 timeout: float, outage: Outage,
                 group: SentinelGroup | None = None,
                 relocate: Callable[[Moved, float], None] | None = None) -> None:  # fmt: skip
        """``group``: the shard's Sentinel group, if it is one; a subscription held on a
        server that is no longer its master is moved to the new one. ``relocate``: in a
        cluster, takes channels whose slot may have another owner now (instead of
        reconnecting to this node), and a delay before the first try."""
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
        self._relocate = relocate
        # Channels taken over from another node: their feeds are reset once confirmed.
        self._reset_on_confirm: set[bytes] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self._sending = asyncio.Lock()
        # Connections lost in a row with nothing heard on them: the next hand-over
        # waits longer, so a node that keeps failing is not retried in a hot loop.
        self._strikes = 0

    async def _subscribe(self, *channels: bytes) -> None:
        assert self._pubsub is not None
        # One at a time: concurrent first subscriptions would each open a connection
        # (redis-py's PubSub connects lazily), and the confirmations sent on all but the
        # last one would never be read.
        async with self._sending:
            if not self._sharded:
                await self._pubsub.subscribe(*channels)
                return
            # One command per channel: the channels of one SSUBSCRIBE must share a slot.
            for channel in channels:
                await self._pubsub.ssubscribe(channel)

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
            self._ensure_reader()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that races the confirmation, leaving a task that cannot be stopped.
            async with asyncio.timeout(self._timeout):
                await asyncio.shield(waiter)
        except (*UNAVAILABLE_ERRORS, rexc.RedisError) as exc:
            feeds.discard(feed)
            # Not a set the channel got again meanwhile (handed over and back, in a cluster).
            if not feeds and self.feeds.get(feed.channel) is feeds:
                del self.feeds[feed.channel]
            raise StoreUnavailable(f"cannot subscribe on {self.name}: {exc}") from exc
        finally:
            self._confirm.pop(feed.channel, None)

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_forever(), name=f"pubsub {self.name}")

    async def attach(self, moved: Moved) -> None:
        """Take over channels from another node's endpoint: subscribe them here (their
        feeds are reset when the server confirms). Raises if the subscription cannot be
        sent; the channels are then not kept."""
        fresh = [ch for ch in moved if ch not in self.feeds]
        for channel, feeds in moved.items():
            self.feeds.setdefault(channel, set()).update(feeds)
            self._reset_on_confirm.add(channel)
        if not fresh:
            # Already subscribed here for another watcher: nothing to wait for.
            for channel in moved:
                self._confirmed(channel)
            return
        try:
            if self._pubsub is None:
                self._pubsub = self._connect()
            await self._subscribe(*fresh)
        except BaseException:
            for channel in fresh:
                self.feeds.pop(channel, None)
                self._reset_on_confirm.discard(channel)
            raise
        self._ensure_reader()

    def _confirmed(self, channel: bytes) -> None:
        if channel in self._reset_on_confirm:
            self._reset_on_confirm.discard(channel)
            for feed in self.feeds.get(channel, ()):
                feed.reset()

    def _hand_over(self, channels: list[bytes], delay: float = 0.0) -> None:
        """Give ``channels`` (and their feeds) to the hub to subscribe on their owner."""
        assert self._relocate is not None
        moved: Moved = {}
        for channel in channels:
            feeds = self.feeds.pop(channel, None)
            self._reset_on_confirm.discard(channel)
            if feeds:
                moved[channel] = feeds
        if moved:
            self._relocate(moved, delay)

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
                async with asyncio.timeout(self._timeout), self._sending:
                    # Under the lock, like a subscription: a command that finds the
                    # connection not open yet would open a second one (see _subscribe).
                    await unsubscribe(feed.channel)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        kind = kind.decode() if isinstance(kind, bytes) else kind
        channel = message["channel"]
        self._strikes = 0
        if kind in ("message", "smessage"):
            for feed in list(self.feeds.get(channel, ())):
                feed.deliver(message["data"])
        elif kind in ("subscribe", "ssubscribe"):
            waiter = self._confirm.get(channel)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self._confirmed(channel)
        elif kind == "sunsubscribe" and channel in self.feeds and self._relocate is not None:
            # Not ours (remove() forgets a channel before unsubscribing it): the node
            # no longer serves the channel's slot, which moved to another node.
            log.info("%s gave up a watched channel's slot; following it", self.name)
            self._hand_over([channel])

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
            except (*UNAVAILABLE_ERRORS, rexc.RedisError, RuntimeError, AttributeError) as exc:
                # RuntimeError, AttributeError: redis-py reading a connection closed under
                # it. A reader that ended here would leave its watchers deaf.
                if self._relocate is not None:
                    self._retire(exc)
                    return
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

    def _retire(self, exc: BaseException) -> None:
        """Cluster: the connection failed (a dead node, or a slot it lost): hand every
        channel to the hub, which finds each one's owner, and end this reader."""
        log.info("pub/sub connection to %s lost: %s; finding the owners of its channels",
                 self.name, exc)  # fmt: skip
        old, self._pubsub = self._pubsub, None
        # From here on, add() opens a new connection and starts a new reader.
        self._reader = None
        delay = min(RELOCATE_BACKOFF, 0.05 * 2**self._strikes) if self._strikes else 0.0
        self._strikes += 1
        self._hand_over(list(self.feeds), delay)
        for waiter in self._confirm.values():
            if not waiter.done():
                waiter.set_exception(rexc.ConnectionError(f"{self.name}: {exc}"))
        if old is not None:
            task = asyncio.ensure_future(old.aclose())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

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
                # add() may have made one while the old one closed: one connection only.
                if self._pubsub is None:
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
        self._relocating: set[asyncio.Task[None]] = set()
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
                # No reconnecting inside redis-py: a lost node is noticed at once, and
                # its channels are followed to their new owner (see _relocate).
                retry=Retry(NoBackoff(), 0),
                **POOL_OPTIONS,
            )
            self._endpoints[name] = _Endpoint(
                name, client.pubsub, True, timeout, shards.outage(name),
                relocate=self._relocate_soon,
            )  # fmt: skip
        return self._endpoints[name]

    def _relocate_soon(self, moved: Moved, delay: float) -> None:
        task = asyncio.ensure_future(self._relocate(moved, delay))
        self._relocating.add(task)
        task.add_done_callback(self._relocating.discard)

    async def _refresh_slots(self) -> None:
        """Read the cluster's slot map again (bounded; a failure keeps the old one)."""
        cluster = self._shards.cluster
        assert cluster is not None
        # Anything: redis-py can fail a refresh with an internal error while it drops
        # connections, and the old map is then the best there is.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._shards.config.timeout):
                await cluster.nodes_manager.initialize()

    async def _relocate(self, moved: Moved, delay: float) -> None:
        """Subscribe channels on the node that owns their slot now, retrying with backoff
        while none does (a failover in progress); ends when no feed is left."""
        if delay:
            await asyncio.sleep(delay)
        delay = max(delay, 0.05)
        while True:
            moved = {
                ch: kept for ch, f in moved.items() if (kept := {x for x in f if not x.closed})
            }
            if not moved:
                return
            try:
                left = await self._place(moved)
            except Exception:
                # The channels' only way back: this must outlive any surprise (redis-py
                # can fail with an internal error while it drops connections).
                log.exception("following %d watched channel(s) failed; trying again", len(moved))
                left = moved
            if not left:
                return
            moved = left
            await asyncio.sleep(delay)
            delay = min(RELOCATE_BACKOFF, delay * 2)

    async def _place(self, moved: Moved) -> Moved:
        """Subscribe each channel on its owner by a fresh slot map; returns those left."""
        await self._refresh_slots()
        groups: dict[_Endpoint, Moved] = {}
        left: Moved = {}
        for channel, feeds in moved.items():
            try:
                endpoint = self._endpoint_for(channel.decode())
            except StoreUnavailable:
                left[channel] = feeds
                continue
            groups.setdefault(endpoint, {})[channel] = feeds
        for endpoint, part in groups.items():
            for channel in part:
                self._where[channel] = endpoint  # a watcher closing meanwhile finds it
            try:
                await endpoint.attach(part)
            except (*UNAVAILABLE_ERRORS, rexc.RedisError) as exc:
                endpoint._outage.failed(exc)
                left.update(part)
            else:
                log.info("%d watched channel(s) now followed on %s", len(part), endpoint.name)
        return left

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
        for task in list(self._relocating):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for endpoint in self._endpoints.values():
            await endpoint.close()
        self._endpoints.clear()
