"""The sections of where state lives: ``[redis]``, ``[sessions]``, ``[state]`` and the
response cache's tiers, ``[cache]``."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import one_of, opt, optional
from .redis_urls import check_redis_url

REPLICA_READS = ("state", "cache", "keys")


@dataclass(frozen=True)
class RedisConfig:
    urls: tuple[str, ...] = opt((), check=check_redis_url)
    cluster: bool = opt(False)
    pool_size: int = opt(64, min=1, max=10000)
    connect_timeout: float = opt(1.0, min=0.01, max=60.0)
    timeout: float = opt(2.0, min=0.01, max=300.0)
    # Seconds a shard found unreachable is failed fast before agentd tries it again.
    down_retry: float = opt(1.0, min=0.0, max=60.0)
    # Redis Cluster: seconds a command on a slot being migrated is retried while the
    # cluster refuses it (TRYAGAIN: its keys are split between the two nodes) before 503.
    migration_wait: float = opt(10.0, min=0.0, max=300.0)
    # Durable acknowledgements: a write agentd acknowledges (a turn, a state write, a
    # job submission, a response record) is answered only after this many replicas
    # confirmed it (WAIT, pipelined with the write); 0 = as soon as the master has it.
    wait_replicas: int = opt(0, min=0, max=100)
    # Milliseconds a write waits for those confirmations; fewer in time is 503
    # store_not_durable (the write is applied on the master, not confirmed durable).
    wait_timeout_ms: int = opt(500, min=1, max=300000)
    # WAITAOF (Redis >= 7.2) instead of WAIT: the replicas confirm the write is fsynced
    # to their append-only file, not only received; wait_local_aof: the master's own too.
    wait_aof: bool = opt(False)
    wait_local_aof: bool = opt(False)
    # Reads that replicas may serve (docs/state.md#reads-from-replicas): "state" (shared
    # state documents read by GET / state_get), "cache" (L2 response cache entries),
    # "keys" (API key records a worker refreshes); empty: every read on the master.
    replica_reads: tuple[str, ...] = opt((), check=one_of(REPLICA_READS))
    # Staleness bound, seconds: a replica is read only while it holds every write its
    # master acknowledged this long ago (checked every quarter of it).
    replica_max_lag: float = opt(1.0, min=0.1, max=60.0)


@dataclass(frozen=True)
class SessionsConfig:
    ttl: int = opt(7 * 24 * 3600, min=1, max=10 * 365 * 24 * 3600)
    max_messages: int = opt(1000, min=1, max=1_000_000)
    max_message_bytes: int = opt(256 * 1024, min=64, max=64 * 1024 * 1024)
    # What a turn gets while another turn of the same session runs: wait for it
    # (enqueue), 409 session_busy (reject), or stop it and go next (interrupt).
    concurrent_turns: str = opt("enqueue", choices=("enqueue", "reject", "interrupt"))
    # Seconds a turn's session lease lasts unless renewed (it is, every third of it): a
    # session whose turn died with its process is free again after at most this long.
    turn_lease: float = opt(2.0, min=0.5, max=3600.0)


@dataclass(frozen=True)
class StateConfig:
    max_value_bytes: int = opt(1024 * 1024, min=64, max=512 * 1024 * 1024)


@dataclass(frozen=True)
class CacheConfig:
    """The response cache's tiers (per agent policy is in ``[agents.cache]``)."""

    l1_max_bytes: int = opt(64 * 1024 * 1024, min=0, max=64 * 1024**3)
    # Seconds between a worker's checks of the cache epoch: the longest an L1 entry can
    # outlive a cache clear whose invalidation message the worker missed.
    l1_max_staleness: float = opt(5.0, min=0.1, max=3600.0)
    # The L3 file (SQLite, shared by the instance's workers); "" turns L3 off.
    disk_path: str = opt("agentd-cache/responses.sqlite")
    disk_max_bytes: int = opt(1024**3, min=1024, max=10 * 1024**4)
    # Seconds a single-flight leader's lock lasts unless renewed (a dead leader's
    # followers take over after at most this long).
    flight_lease: float = opt(10.0, min=0.1, max=600.0)
    # L2 on a Redis of its own (one server or a Sentinel group; "" = on the store's
    # servers): one that may evict (allkeys-lru) while the store's must not.
    redis_url: str = opt("", check=optional(check_redis_url))
