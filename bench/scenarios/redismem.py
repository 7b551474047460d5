"""What a Redis holds for its data: ``used_memory`` without its clients' buffers, read
once Redis's lazy work on them and on its key tables has settled.

``used_memory`` counts every client's query and reply buffers, and after a burst of
requests agentd's few dozen connections hold about 20 KiB of query buffer and up to 16
KiB of reply buffer each, which Redis's ``clientsCron`` gives back seconds later (a query
buffer once its client has been idle 2 s, a reply buffer in halvings). A baseline read
right after the warm-up and a point read after that cron are hundreds of KB apart the
wrong way: the memory curve once fell while sessions were created. ``used_memory_dataset``
does not help: it is ``used_memory`` minus an overhead whose clients' part the same cron
updates, so it moved with the buffers too.

:func:`data_bytes` reads ``used_memory`` and ``CLIENT LIST`` in one ``MULTI`` (nothing
runs between them) and subtracts every client's ``tot-mem``, which Redis computes there
and then. Query buffers are counted exactly there; an enlarged reply buffer is not (over
by about half of it), so it first waits until no client has one, and until neither of
db 0's key tables is being rehashed (both tables held at once for a while). Each reading
is made on a new connection, so the reader's own client costs the same every time.
"""

from __future__ import annotations

from typing import Any

from tests.waiting import wait_until_sync

__all__ = ("SETTLE_LIMIT", "data_bytes", "settled")

SETTLE_LIMIT = 60.0  # seconds; the cron needs about 1-2 s after the last request
# clientsCronResizeOutputBuffer halves a reply buffer while the half is at least
# PROTO_REPLY_MIN_BYTES: one under twice that is as small as it gets.
REPLY_SETTLED = 2 * 1024
# MEMORY STATS' overhead.hashtable.main = keys x (dictEntry + robj) + slots x pointer;
# .expires = expiring keys x dictEntry + slots x pointer (Redis 7.0's object.c).
MAIN_PER_KEY, EXPIRES_PER_KEY, SLOT = 24 + 16, 24, 8


def _power_of_two(n: int) -> bool:
    return n == 0 or (n > 0 and n & (n - 1) == 0)


def _not_rehashing(stats: dict[str, Any], keyspace: dict[str, Any]) -> bool:
    """Whether db 0's main and expires tables each have one table of slots (a power of
    two), not two (a rehash in progress). Unknown layouts (another Redis) count as settled."""
    db = stats.get("db.0")
    if not isinstance(db, dict):
        return True  # an empty db
    db0 = keyspace.get("db0") or {}
    keys, expires = int(db0.get("keys", 0)), int(db0.get("expires", 0))
    main = int(db["overhead.hashtable.main"]) - keys * MAIN_PER_KEY
    exp = int(db["overhead.hashtable.expires"]) - expires * EXPIRES_PER_KEY
    if main % SLOT or exp % SLOT:
        return True
    return _power_of_two(main // SLOT) and _power_of_two(exp // SLOT)


def settled(client: Any) -> bool:
    """Whether no client (but this one) holds a reply buffer Redis will still shrink and
    no key table is rehashing."""
    me = int(client.client_id())
    for c in client.client_list():
        if int(c["id"]) != me and int(c.get("rbs", 0)) >= REPLY_SETTLED:
            return False
    return _not_rehashing(client.memory_stats(), client.info("keyspace"))


def data_bytes(url: str, limit: float = SETTLE_LIMIT) -> int:
    """``used_memory`` less every client's memory, once :func:`settled` (within ``limit``
    seconds): what the keys and Redis's fixed structures hold."""
    import redis as redis_py

    def ready() -> bool:
        with redis_py.Redis.from_url(url) as client:
            return settled(client)

    wait_until_sync(ready, limit, f"Redis at {url} to settle")
    with redis_py.Redis.from_url(url) as client:
        pipe = client.pipeline(transaction=True)
        pipe.info("memory")
        pipe.client_list()
        info, clients = pipe.execute()
    return int(info["used_memory"]) - sum(int(c["tot-mem"]) for c in clients)
