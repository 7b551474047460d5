"""The Redis store: every primitive is one Lua script (one round trip) on the session's shard.

Works the same on one Redis, on client-side shards and on a Redis Cluster (see
:mod:`.shards`); the keys are in :mod:`agentd.store.keys`, the scripts in
:mod:`agentd.store.scripts`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from ...config import Config
from ...fastpath import SLOT_COUNT, key_slot
from .. import keys as K
from .. import scripts as L
from ..api import Jobs, Subscription
from ..base import BaseStore
from ..sessions import IndexRow, activity_ms
from .blobs import RedisBlobs
from .dead import RedisDeadLetters
from .index import IndexWrites
from .keyring import RedisKeyring
from .limits import RedisLimits
from .pubsub import EventHub
from .queue import RedisQueue
from .records import RedisRecords
from .registry import RedisRegistry
from .renewals import Renewals
from .shards import Shards, once_more_if_broken

__all__ = ("CLUSTER_INDEX_BUCKETS", "RedisJobs", "RedisStore", "sharded_index_keys")

# A Redis Cluster's session index is split into this many keys (spread over the slots,
# so over the masters); a listing reads them all, in parallel.
CLUSTER_INDEX_BUCKETS = 16


def sharded_index_keys(prefix: str, count: int) -> list[str]:
    """The session index keys of ``count`` client-side shards (one Redis: 1), one per
    shard: the first tag, counting from 0, whose key lands on that shard."""
    found: dict[int, str] = {}
    tag = 0
    while len(found) < count:
        key = K.session_index(str(tag), prefix)
        found.setdefault(key_slot(key) * count // SLOT_COUNT, key)
        tag += 1
    return [found[i] for i in range(count)]


def _pairs(flat: list[bytes]) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def _lex_range(after: str | None, prefix: str) -> tuple[str, str]:
    """ZRANGEBYLEX bounds of the names after ``after`` that start with ``prefix``."""
    low = f"[{prefix}" if prefix else "-"
    if after is not None and after >= prefix:
        low = f"({after}"
    # Names are ASCII below DEL, so prefix + DEL sorts after every name it starts.
    high = f"[{prefix}\x7f" if prefix else "+"
    return low, high


def _heads(flat: list[Any]) -> list[tuple[int, int] | None]:
    """HGET ver, HSTRLEN v pairs as (version, size), None for a missing document."""
    return [
        None if flat[i] is None else (int(flat[i]), int(flat[i + 1]))
        for i in range(0, len(flat), 2)
    ]


def _entries(rows: list[Any]) -> list[tuple[int, bytes]]:
    """Stream entries ``[id, [b"m", payload]]`` as (seq, payload)."""
    return [(int(entry_id.split(b"-", 1)[0]), fields[1]) for entry_id, fields in rows]


class RedisJobs(RedisQueue, RedisRecords, RedisDeadLetters, Jobs):
    """The queue and the records, over the same shards and pub/sub connections."""

    def __init__(
        self, shards: Shards, hub: EventHub, waits: Shards, renewals: Renewals, events_ttl_s: int
    ) -> None:
        RedisQueue.__init__(self, shards, waits, renewals)
        RedisRecords.__init__(self, shards, hub, events_ttl_s)

    def scoped(self, prefix: str) -> RedisJobs:
        """The same queue, with the records of the tenant whose keys start with ``prefix``."""
        view = copy.copy(self)
        view.prefix = prefix
        return view


class RedisStore(BaseStore):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.mode = config.mode
        self.shards = Shards(config.redis)
        self.hub = EventHub(self.shards)
        self.blobs = RedisBlobs(self.shards, self.hub)
        # L2 on a Redis of its own ([cache] redis_url), its pub/sub (cache clears) too.
        self.cache_shards: Shards | None = None
        if config.cache.redis_url:
            # Its writes are never acknowledged writes: redis.wait_* do not apply.
            own = dataclasses.replace(config.redis, urls=(config.cache.redis_url,), cluster=False)
            self.cache_shards = Shards(own)
            self.cache_hub = EventHub(self.cache_shards)
            self.blobs = RedisBlobs(self.cache_shards, self.cache_hub)
        # Job consumers wait on their streams (XREADGROUP BLOCK) over connections of their
        # own, one per stream they read, so waiting never takes the pool's connections.
        served = set(config.server.partitions)
        streams = sum(
            p.queue_shards for p in config.all_partitions() if not served or p.name in served
        )
        self.waits = Shards(
            dataclasses.replace(config.redis, pool_size=max(1, streams)), outages_of=self.shards
        )
        # Lease renewals over connections of their own (see renewals.py).
        self.renewals = Renewals(config.redis, self.shards)
        ttl = config.jobs.events_ttl_s
        self.jobs = RedisJobs(self.shards, self.hub, self.waits, self.renewals, ttl)
        self.limits = RedisLimits(self.shards)
        self.keyring = RedisKeyring(self.shards, self.hub)
        self.registry = RedisRegistry(self.shards)
        # Every key starts with the tenant's prefix (see keys.tenant_prefix).
        self.prefix = K.PREFIX
        # Releases of leases granted to cancelled callers (kept so they are not collected).
        self._releasing: set[asyncio.Task[Any]] = set()
        self.clustered = self.shards.cluster is not None
        self.index_keys = self._index_keys()
        self.index_writes = IndexWrites(self.shards)

    def _scope(self, tenant: str) -> None:
        self.prefix = K.tenant_prefix(tenant)
        self.index_keys = self._index_keys()
        self.jobs = self.jobs.scoped(self.prefix)

    def _session(self, sid: str) -> tuple[str, str]:
        return K.session_keys(sid, self.prefix)

    def _channel(self, sid: str) -> str:
        return K.session_channel(sid, self.prefix)

    def _turn(self, sid: str) -> str:
        return K.turn_key(sid, self.prefix)

    def _index_keys(self) -> list[str]:
        """The session index keys: one per shard, named so each lands on its shard (one
        Redis, client-side shards), or the cluster's buckets."""
        if self.clustered:
            return [K.session_index(f"b{b}", self.prefix) for b in range(CLUSTER_INDEX_BUCKETS)]
        return sharded_index_keys(self.prefix, len(self.shards.clients))

    def _index_of(self, sid: str, agent: str = "") -> str:
        """The index key of the session (of its agent's sessions, with ``agent``): on its
        shard, or its cluster bucket."""
        meta = self._session(sid)[0]
        if self.clustered:
            key = self.index_keys[key_slot(meta) % CLUSTER_INDEX_BUCKETS]
        else:
            key = self.index_keys[self.shards.shard_of(meta)]
        return K.session_agent_index(key, agent) if agent else key

    def _own_index(self, sid: str) -> list[str]:
        """The index key as the session's scripts' last key, where the script may write
        it (not in a cluster: another slot)."""
        return [] if self.clustered else [self._index_of(sid)]

    def _index_add(self, sid: str, score: int, agent: str) -> None:
        """In a cluster, index a session that was written, in its agent's index too
        (see :mod:`.index`)."""
        if self.clustered:
            self.index_writes.add(self._index_of(sid), sid, score)
            if agent:
                self.index_writes.add(self._index_of(sid, agent), sid, score)

    def _appended(self, sid: str, score: int, reply: Any) -> int | None:
        """The first seq an append script answered; in a cluster its reply is {first
        seq, the session's agent}, and the session is indexed behind it."""
        if isinstance(reply, list):
            self._index_add(sid, score, reply[1].decode())
            return int(reply[0])
        return None if reply is None else int(reply)

    async def start(self) -> None:
        await self.shards.start()
        await self.waits.start()
        await self.renewals.start()
        if self.cache_shards is not None:
            await self.cache_shards.start()

    async def close(self) -> None:
        await self.index_writes.close()
        await self.hub.close()
        await self.shards.close()
        await self.waits.close()
        await self.renewals.close()
        if self.cache_shards is not None:
            await self.cache_hub.close()
            await self.cache_shards.close()

    def count_waits(self, observe: Callable[[str], None]) -> None:
        self.shards.acks.observe = observe

    def count_replica_reads(self, observe: Callable[[str, str], None]) -> None:
        if self.shards.replicas is not None:
            self.shards.replicas.observe = observe

    async def readiness(self) -> str | None:
        reasons = await self.shards.unreachable()
        return "; ".join(reasons) if reasons else None

    # -- sessions and history -------------------------------------------------------

    async def _create(self, sid: str, meta: dict[str, str]) -> bool:
        flat = [x for kv in meta.items() for x in kv]
        keys = [*self._session(sid), *self._own_index(sid)]
        score = activity_ms()
        created = bool(
            await self.shards.eval(L.CREATE, keys, [self.ttl, score, sid, *flat], acked=True)
        )
        if created:
            self._index_add(sid, score, meta.get("agent", ""))
        return created

    async def _get_meta(self, sid: str) -> dict[str, str] | None:
        flat = await self.shards.eval(
            L.GET_META, list(self._session(sid)), [self.ttl], may_repeat=True
        )
        return None if flat is None else _pairs(flat)

    async def _delete(self, sid: str) -> bool:
        keys = [*self._session(sid), self._channel(sid), self._turn(sid)]
        keys += self._own_index(sid)
        found = bool(
            await self.shards.eval(L.DELETE, keys, [self.shards.publish_command, sid], acked=True)
        )
        if self.clustered:
            self.index_writes.remove(self._index_of(sid), sid)
        return found

    async def _append(self, sid: str, payloads: list[bytes]) -> int | None:
        keys = [*self._session(sid), self._channel(sid), *self._own_index(sid)]
        score = activity_ms()
        args = [self.ttl, self.max_messages, self.shards.publish_command, score, sid, *payloads]
        return self._appended(sid, score, await self.shards.eval(L.APPEND, keys, args, acked=True))

    async def _history(
        self, sid: str, after: int | None, limit: int | None, before: int | None = None
    ) -> list[tuple[int, bytes]] | None:
        args = [
            self.ttl,
            "" if after is None else after,
            "" if limit is None else limit,
            "" if before is None else before,
        ]
        rows = await self.shards.eval(L.HISTORY, list(self._session(sid)), args, may_repeat=True)
        return None if rows is None else _entries(rows)

    async def _update_meta(self, sid: str, metadata: str) -> dict[str, str] | None:
        meta_key = self._session(sid)[0]
        args = [self.ttl, metadata]
        flat = await self.shards.eval(L.UPDATE_META, [meta_key], args, acked=True)
        return None if flat is None else _pairs(flat)

    async def _delete_message(self, sid: str, seq: int, event: bytes) -> bool | None:
        keys = [*self._session(sid), self._channel(sid)]
        args = [self.ttl, seq, self.shards.publish_command, event]
        found = await self.shards.eval(L.DELETE_MESSAGE, keys, args, acked=True)
        return None if found is None else bool(found)

    def _listed_keys(self, agent: str) -> list[str]:
        """The index keys a listing reads: the sessions', or one agent's."""
        if not agent:
            return self.index_keys
        return [K.session_agent_index(key, agent) for key in self.index_keys]

    async def _list_sessions(
        self, cursor: tuple[int, str] | None, limit: int, agent: str = ""
    ) -> list[IndexRow]:
        if self.clustered:
            return await self._list_clustered(cursor, limit, agent)
        top, after = ("+inf", "") if cursor is None else (str(cursor[0]), cursor[1])
        meta_prefix = K.session_meta_prefix(self.prefix)
        args = [top, after, limit, meta_prefix, K.SESSION_META_SUFFIX, agent]
        # Every shard's newest, in parallel: one round trip of latency for the page.
        pages = await asyncio.gather(
            *(
                self.shards.eval(L.LIST_SESSIONS, [key], args, may_repeat=True)
                for key in self._listed_keys(agent)
            )
        )
        rows = [
            (int(float(flat[i + 1])), flat[i].decode(), _pairs(flat[i + 2]))
            for flat in pages
            for i in range(0, len(flat), 3)
        ]
        rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
        return rows[:limit]

    async def _list_clustered(
        self, cursor: tuple[int, str] | None, limit: int, agent: str
    ) -> list[IndexRow]:
        """The cluster's listing: its index buckets, then the metas of the candidates,
        each step one pipeline (its commands grouped per node, the nodes in parallel):
        two round trips of latency a page, more when expired entries fill it (they are
        removed as met)."""
        await self.index_writes.flush()  # this worker's own writes first
        rows: list[IndexRow] = []
        window = limit + 16
        while len(rows) < limit:
            top = "+inf" if cursor is None else cursor[0]
            fetched = await self._batch(
                [
                    (
                        "zrevrangebyscore",
                        (key, top, "-inf"),
                        {"start": 0, "num": window, "withscores": True},
                    )
                    for key in self._listed_keys(agent)
                ]
            )
            candidates: list[tuple[int, str]] = []
            frontier: tuple[int, str] | None = None  # below it, a full bucket may hold more
            for entries in fetched:
                listed = [(int(score), member.decode()) for member, score in entries]
                if len(listed) == window:
                    frontier = max(frontier or listed[-1], listed[-1])
                candidates += [e for e in listed if cursor is None or e < cursor]
            candidates = sorted(
                (e for e in candidates if frontier is None or e >= frontier), reverse=True
            )
            if not candidates:
                return rows
            need = limit - len(rows)
            metas = await self._batch(
                [("hgetall", (self._session(sid)[0],), {}) for _, sid in candidates[:need]]
            )
            gone = []
            for (score, sid), meta in zip(candidates, metas, strict=False):
                cursor = (score, sid)
                fields = {k.decode(): v.decode() for k, v in meta.items()}
                # In an agent's index, an entry left by a deleted session (removed from
                # it by readers only) may name a session of another agent now.
                if fields and (not agent or fields.get("agent") == agent):
                    rows.append((score, sid, fields))
                else:
                    gone.append(("zrem", (self._index_of(sid, agent), sid), {}))
            if gone:
                await self._batch(gone)
            if frontier is None and len(candidates) <= need:
                return rows  # every entry after the cursor was seen
        return rows

    async def _batch(
        self, commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
    ) -> list[Any]:
        """Commands on keys of any slots as one cluster pipeline: one connection and one
        round trip per node, the nodes in parallel."""

        async def run(client: Any) -> list[Any]:
            pipe = client.pipeline()
            for name, args, kwargs in commands:
                getattr(pipe, name)(*args, **kwargs)
            return list(await pipe.execute())

        return await self.shards.call(commands[0][1][0], run)

    async def _load(
        self, sid: str, last: int
    ) -> tuple[dict[str, str], list[tuple[int, bytes]]] | None:
        found = await self.shards.eval(
            L.LOAD, list(self._session(sid)), [self.ttl, last], may_repeat=True
        )
        if found is None:
            return None
        return _pairs(found[0]), _entries(found[1])

    # -- turns ----------------------------------------------------------------------

    async def _begin_turn(
        self, sid: str, last: int, lease_ms: int
    ) -> tuple[int, dict[str, str], list[tuple[int, bytes]]] | None:
        keys = [*self._session(sid), self._turn(sid)]
        # A caller cancelled while Redis grants the lease (the reply on its way back)
        # would leave the session held by nobody until the lease runs out: the reply is
        # still read, and the lease let go.
        args = [self.ttl, last, lease_ms]
        let_go = lambda found: self._let_go_orphan(sid, found)  # noqa: E731
        found = await self.shards.eval(L.BEGIN_TURN, keys, args, orphan=let_go)
        if found is None:
            return None
        return int(found[0]), _pairs(found[1]), _entries(found[2])

    def _let_go_orphan(self, sid: str, found: Any) -> None:
        """Release a lease granted to a caller that was cancelled meanwhile."""
        if found is not None and int(found[0]):
            release = asyncio.ensure_future(self._end_turn(sid, int(found[0]), []))
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)

    async def _renew_turn(self, sid: str, token: int, lease_ms: int) -> int:
        keys = [self._turn(sid), self._session(sid)[0]]
        return int(await self.renewals.eval(L.RENEW_TURN, keys, [token, lease_ms]))

    async def _interrupt_turn(self, sid: str) -> bool:
        return bool(await self.shards.eval(L.INTERRUPT_TURN, [self._turn(sid)], []))

    async def _end_turn(self, sid: str, token: int, payloads: list[bytes]) -> int | None:
        keys = [*self._session(sid), self._channel(sid), self._turn(sid)]
        keys += self._own_index(sid)
        score = activity_ms()
        args = [self.ttl, self.max_messages, self.shards.publish_command, token, score, sid]
        # A release alone (no messages) acknowledges nothing: no wait.
        reply = await self.shards.eval(L.END_TURN, keys, [*args, *payloads], acked=bool(payloads))
        return self._appended(sid, score, reply)

    # -- events ---------------------------------------------------------------------

    async def _subscribe(self, sid: str) -> Subscription:
        return await self.hub.subscribe(self._channel(sid))

    async def _publish(self, sid: str, event: bytes) -> None:
        channel = self._channel(sid)
        await self.shards.eval(L.PUBLISH, [channel], [self.shards.publish_command, event])

    # -- shared state ---------------------------------------------------------------

    async def _state_read(self, name: str) -> tuple[bytes, int] | None:
        key = K.state_key(name, self.prefix)
        read = once_more_if_broken(lambda c: c.hmget(key, "v", "ver"))
        value, version = await self.shards.call(key, read)
        return None if value is None else (value, int(version))

    async def _state_peek(self, name: str) -> tuple[bytes, int] | None:
        key = K.state_key(name, self.prefix)
        # A replica's "no such document" is asked again of the master: a document just
        # created is never answered 404 (an older version, within the bound, may be).
        value, version = await self.shards.read(
            "state", key, lambda c: c.hmget(key, "v", "ver"), ask_master=lambda r: r[0] is None
        )
        return None if value is None else (value, int(version))

    async def _state_write(
        self, name: str, data: bytes, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        args = [data, "" if expected is None else expected]
        key = K.state_key(name, self.prefix)
        reply = await self.shards.eval(L.STATE_WRITE, [key], args, acked=True)
        return bool(reply[0]), int(reply[1]), reply[2] if len(reply) > 2 else None

    async def _state_remove(
        self, name: str, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        args = ["" if expected is None else expected]
        key = K.state_key(name, self.prefix)
        reply = await self.shards.eval(L.STATE_REMOVE, [key], args, acked=True)
        return bool(reply[0]), int(reply[1]), reply[2] if len(reply) > 2 else None

    # -- the shared state listing (see agentd/store/state.py) ------------------------

    async def _state_index(self, namespace: str, keys: list[str], *, add: bool) -> None:
        index = K.state_index(self.tenant, self.prefix)
        args = ["+" if add else "-", namespace, *keys]
        await self.shards.eval(L.STATE_INDEX, [index, f"{index}:{namespace}"], args, acked=True)

    async def _state_namespaces(self, after: str | None, limit: int) -> list[tuple[str, int]]:
        index = K.state_index(self.tenant, self.prefix)
        flat = await self.shards.eval(L.STATE_NAMESPACES, [index], [after or "", limit])
        return [(flat[i].decode(), int(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def _state_keys(
        self, namespace: str, after: str | None, prefix: str, limit: int
    ) -> list[str]:
        key = f"{K.state_index(self.tenant, self.prefix)}:{namespace}"
        low, high = _lex_range(after, prefix)
        rows = await self.shards.call(
            key, lambda c: c.zrangebylex(key, low, high, start=0, num=limit)
        )
        return [row.decode() for row in rows]

    async def _state_page(
        self, namespace: str, after: str | None, prefix: str, limit: int
    ) -> list[tuple[str, tuple[int, int] | None]]:
        if self.clustered or len(self.shards.clients) > 1 or self.shards.moving is not None:
            # The documents are on other shards than the index: a second round trip.
            return await super()._state_page(namespace, after, prefix, limit)
        key = f"{K.state_index(self.tenant, self.prefix)}:{namespace}"
        docs = K.state_key(f"{namespace}/", self.prefix)[:-1]  # without the closing brace
        flat = await self.shards.eval(
            L.STATE_PAGE, [key], [*_lex_range(after, prefix), limit, docs]
        )
        return [
            (flat[i].decode(), (int(flat[i + 1]), int(flat[i + 2])) if flat[i + 1] else None)
            for i in range(0, len(flat), 3)
        ]

    async def _state_heads(self, names: list[str]) -> list[tuple[int, int] | None]:
        """Each document's version and size: one pipeline per shard (per node in a
        cluster), the shards in parallel."""
        if not names:
            return []
        keys = [K.state_key(name, self.prefix) for name in names]
        if self.clustered:
            flat = await self._batch(
                [c for k in keys for c in (("hget", (k, "ver"), {}), ("hstrlen", (k, "v"), {}))]
            )
            return _heads(flat)
        # A reshard routes each key by itself (its slot may be moving).
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            shard = self.shards.shard_of(key) if self.shards.moving is None else -1 - i
            groups.setdefault(shard, []).append(i)

        async def heads(group: list[int]) -> list[tuple[int, int] | None]:
            async def run(client: Any) -> list[Any]:
                pipe = client.pipeline(transaction=False)
                for i in group:
                    pipe.hget(keys[i], "ver")
                    pipe.hstrlen(keys[i], "v")
                return list(await pipe.execute())

            return _heads(await self.shards.call(keys[group[0]], run))

        found: list[tuple[int, int] | None] = [None] * len(keys)
        groups_list = list(groups.values())
        for group, answer in zip(
            groups_list, await asyncio.gather(*(heads(g) for g in groups_list)), strict=True
        ):
            for i, head in zip(group, answer, strict=True):
                found[i] = head
        return found
