"""Shards that are Sentinel-monitored master/replica groups (``redis+sentinel://`` URLs).

A group's client asks the sentinels for the current master before each new connection
(redis-py's ``SentinelConnectionPool``), so after a failover the next connection goes to
the promoted replica with no restart. Connections to the old master fail (it died, or
answers ``READONLY`` as a demoted replica), the shard fails fast as any unreachable
shard does (see :mod:`.shards`), and the idle connections are dropped, so the next call
finds the new master. The group's name is the shard's identity: the slot mapping does
not change when its master does.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from ...config import SENTINEL_SCHEME, RedisConfig, SentinelUrl, parse_sentinel_url
from .idle import POOL_OPTIONS

__all__ = ("SentinelGroup", "open_server")

log = logging.getLogger(__name__)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's connections: a burst beyond the pool waits for one (as on the other
    shards) instead of failing, and a change of master is logged once per worker."""

    def __init__(
        self, service_name: str, sentinel_manager: Sentinel, announce: bool, **kwargs: Any
    ) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)
        self.announce = announce
        self.known_master: tuple[str, int] | None = None

    async def get_master_address(self) -> tuple[str, int]:
        address: tuple[str, int] = await super().get_master_address()
        if address != self.known_master:
            if self.known_master is not None and self.announce:
                log.warning(
                    "sentinel group %s: master is now %s:%s (was %s:%s)",
                    self.service_name,
                    *address,
                    *self.known_master,
                )
            self.known_master = address
        return address


class _Sentinels(Sentinel):
    """redis-py's Sentinel client, with a short error when no sentinel names a master (its
    own lists the repr of every sentinel client: unreadable in a log or /readyz)."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            address: tuple[str, int] = await super().discover_master(service_name)
        except MasterNotFoundError:
            raise MasterNotFoundError(
                f"no sentinel names a master of {service_name!r} that is up"
            ) from None
        return address


class SentinelGroup:
    """One shard's Sentinel group: the sentinels, and a client of the current master."""

    def __init__(
        self, url: str, config: RedisConfig, options: dict[str, Any], announce: bool = True
    ) -> None:
        """``options``: the connection options of every shard's client (timeouts, no
        retries inside redis-py); ``announce``: whether this client logs a change of
        master (one client per worker does)."""
        self.url: SentinelUrl = parse_sentinel_url(url)
        target = self.url
        sentinel_options = {
            "socket_connect_timeout": config.connect_timeout,
            "socket_timeout": config.timeout,
            "retry": options["retry"],
            "username": target.sentinel_username,
            "password": target.sentinel_password,
            **POOL_OPTIONS,
        }
        self.sentinel = _Sentinels(list(target.sentinels), sentinel_kwargs=sentinel_options)
        self.client: aioredis.Redis = self.sentinel.master_for(
            target.group,
            connection_pool_class=_BlockingSentinelPool,
            announce=announce,
            max_connections=config.pool_size,
            timeout=config.timeout,
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
        )

    @property
    def name(self) -> str:
        return f"sentinel group {self.url.group} via {self.url.addresses}"

    def master(self) -> tuple[str, int] | None:
        """The master this worker last connected to (None before the first connection)."""
        pool = self.client.connection_pool
        return pool.known_master if isinstance(pool, _BlockingSentinelPool) else None

    async def refresh(self) -> tuple[str, int] | None:
        """Ask the sentinels where the master is now (as a new connection would; a
        change drops the idle connections to the old one). None when none answers."""
        pool = self.client.connection_pool
        assert isinstance(pool, _BlockingSentinelPool)
        try:
            return await pool.get_master_address()
        except (rexc.ConnectionError, rexc.TimeoutError):
            return None

    async def discover(self) -> str:
        """Where the group's master is now, for the start-up log."""
        host, port = await self.sentinel.discover_master(self.url.group)
        return f"{host}:{port}"

    async def close(self) -> None:
        await self.client.aclose()
        await self.sentinel.aclose()


def open_server(
    url: str, config: RedisConfig, options: dict[str, Any], announce: bool = False
) -> tuple[aioredis.Redis, SentinelGroup | None]:
    """A client of what ``url`` names, and its group when it is a Sentinel group (whose
    client finds the current master at each new connection; close the group, not the
    client). ``options``: the connection options of every shard's client; ``announce``:
    log a change of master."""
    if url.startswith(SENTINEL_SCHEME):
        rest = {k: v for k, v in options.items() if k != "max_connections"}
        group = SentinelGroup(url, config, rest, announce=announce)
        return group.client, group
    return aioredis.Redis.from_url(url, **options), None
