"""Every Redis key and channel agentd uses, in one place (the Lua scripts that use them
are in :mod:`.scripts`).

Every key of a tenant's objects starts with the tenant's prefix (:func:`tenant_prefix`):
``agentd:`` for the unnamed tenant ``""`` (the keys below as written), ``agentd:t:NAME:``
for tenant ``NAME`` (``agentd:t:acme:s:{SID}:meta``). The prefix stays outside the hash
tag, so a session keeps its slot and every operation on it stays one round trip. The
cache entries, the cache epoch and the job queue streams are not a tenant's: they keep
the plain prefix (a cache entry's hash already covers its tenant unless the agent shares
its cache; a queued job's id names its tenant, ``acme/resp_…``).

Each key of a session carries the session id as its hash tag (``{...}``), so one
session lives on one shard and one Redis Cluster slot: its multi-key scripts are atomic
and never answer CROSSSLOT. A shared-state document is tagged with its own
``namespace/key``, so documents spread over the shards.

- ``agentd:s:{SID}:meta`` (hash): ``seq`` (the last message seq), ``created_at``,
  ``tenant``, ``agent``, ``metadata`` (JSON).
- ``agentd:s:{SID}:log`` (stream): one entry per message, id ``SEQ-0``, field ``m`` =
  the message JSON; trimmed to ``sessions.max_messages``.
- ``agentd:s:{SID}:turn`` (hash, with a TTL): the running turn's lease, ``token`` (its
  fencing token, from the meta hash's ``fence`` counter) and ``interrupt`` when asked to stop.
- ``agentd:s:{SID}:ev`` (channel): the session's events (sharded pub/sub in a cluster).
- ``agentd:sx:{TAG}`` (sorted set): an index of sessions, member the session id, score
  its last activity (unix ms). One per shard on one Redis or client-side shards (``TAG``
  chosen so the key lands on that shard, beside the sessions it indexes), a fixed number
  of buckets in a Redis Cluster (``TAG`` = ``b`` and the bucket number); see
  docs/state.md. ``agentd:sx:{TAG}:a:AGENT`` (sorted set): the same for the sessions
  of one agent (same ``TAG``, so the same shard or bucket as the index it refines).
- ``agentd:c:{HASH}`` (string, TTL): a cached response (the cache's L2);
  ``agentd:c:{HASH}:lock`` (string, short TTL) the single-flight leader's lease, and
  ``agentd:c:{HASH}:flight`` (stream, short TTL) the chunks it streams to followers.
- ``agentd:cache:epoch`` (counter) bumped by every cache clear; ``agentd:cache:invalidate``
  (channel) tells every worker to drop its L1.
- ``agentd:st:{NS/KEY}`` (hash): ``v`` (the document JSON), ``ver`` (its version).
- ``agentd:stn:{st/TENANT}`` (sorted set, every score 0, so in name order): the tenant's
  namespaces that hold documents; ``agentd:stn:{st/TENANT}:NS`` (the same): the keys of
  namespace NS. All on the tenant's slot, so one script keeps both in step and one lists
  a page of namespaces with their counts. Written when a document is created, cleaned
  when it is deleted, never by an update (see docs/state.md).
- ``agentd:q:{PARTITION:N}`` (stream, consumer group ``agentd``): shard N of a job
  partition's queue, one entry per delivery, field ``id`` = the job id (:func:`job_id`);
  acknowledged entries are deleted. ``agentd:q:{PARTITION}:dead`` (stream, capped): dead letters,
  fields ``id`` (the job id), ``error`` (JSON), ``att`` (attempts made).
  ``agentd:qr:{PARTITION:N}`` (counter): the failed attempts put back on shard N (the
  stream's slot, outside the ``q:{`` keys a reshard merges as streams).
- ``agentd:reg:{registry}`` (hash): the service registry, field ``INSTANCE/WORKER`` = the
  worker's entry (JSON); ``agentd:reg:{registry}:seen`` (sorted set) its last heartbeat
  (server ms). One slot, so one script beats and one lists every worker.
- ``agentd:r:{RID}`` (hash, TTL): a response: ``status``, ``att`` (the attempt that may
  write), ``seq`` (the next event's sequence number), ``cx`` (cancel asked), ``req``
  (the request JSON) and the result fields; ``agentd:r:{RID}:ev`` (stream, TTL) its
  events, id ``0-(N+1)`` for sequence number N; ``agentd:r:{RID}:ch`` (channel) the same
  events live; ``agentd:r:{RID}:steps`` (list, expiring with the record) the steps its
  agent's tool loop completed, one JSON document each, so that a later attempt goes on
  after them (deleted when the response ends).
- ``agentd:l:{TENANT}:SCOPE`` (hash, TTL): one scope's limits (``SCOPE`` = ``t``, the
  tenant, or ``k:KEYID``, one of its API keys): ``tl``/``tt`` (the token bucket's level
  and when it was computed, ms), ``dd``/``dt`` (the UTC day and its tokens), ``md``/``mt``
  (the month and its tokens); ``agentd:l:{TENANT}:SCOPE:rl`` (hash, TTL) the
  requests admitted in the last minute, counted per bucket of 100 ms (field: the
  bucket's number, server ms // 100; ``o`` the oldest bucket that counts, ``s`` the sum),
  and up to five buckets ahead holding a worker's leased places: at most 606 counts
  whatever the limit; ``agentd:l:{TENANT}:SCOPE:cc`` (sorted set, TTL) the turn slots
  held (member the ticket, or ``WORKER.slot-N`` of a worker's leased block, score its
  lease's end, ms).
  Every scope of a tenant shares the tenant's hash tag: a request's key and tenant
  limits are checked in one script. See docs/auth.md.
- ``agentd:l:{TENANT}:u:YYYYMMDD`` (hash, TTL): the tenant's usage of one UTC day
  (``requests``, ``prompt_tokens``, ``completion_tokens``, ``cache_hits``, and the same
  per key as ``KEY/FIELD``), written by the limiter's script with its charges.
- ``agentd:k:{ID}`` (hash): an API key's record (:class:`.api.KeyRecord`): ``tenant``,
  ``name``, ``hash`` (SHA-256 of the key's secret, hex), ``scopes`` / ``agents`` / ``limits``
  (JSON), ``created_at``, ``expires_at`` (``""``: never), ``disabled`` (``0``/``1``).
  ``agentd:kt:{TENANT}`` (sorted set, every score 0, so in id order): the ids of a
  tenant's keys; ``agentd:ka`` (the same): every key id. The indexes live on other
  slots than the records, so they are written first and cleaned last: an index may name
  a key that is gone (readers skip it), a record is never missing from its indexes.
  ``agentd:keys:changed`` (channel): the id of every key created, updated or revoked, so
  every worker drops its cached record at once.
- ``agentd:reshard:{reshard51181}`` (hash), ``…:slots`` (hash), ``…:w:ID`` (string, TTL):
  a sharded-mode reshard's plan, its progress and its followers' heartbeats, in slot 0
  (see :mod:`.redis.moving`); the session index keys (``sx:{``) are rebuilt by it, every
  other key above moves with DUMP / RESTORE.
"""

from __future__ import annotations

__all__ = (
    "AGENT_INDEX_JOIN",
    "CACHE_CHANNEL",
    "CACHE_EPOCH",
    "CACHE_PATTERN",
    "JOB_GROUP",
    "KEYS_ALL",
    "KEYS_CHANNEL",
    "LIMIT_PREFIX",
    "PREFIX",
    "SESSION_META_PREFIX",
    "SESSION_META_SUFFIX",
    "USAGE_PATTERN",
    "cache_key",
    "dead_key",
    "flight_keys",
    "job_id",
    "job_of",
    "key_record",
    "limit_keys",
    "queue_key",
    "record_keys",
    "registry_keys",
    "retries_key",
    "session_agent_index",
    "session_channel",
    "session_index",
    "session_keys",
    "session_meta_prefix",
    "state_index",
    "state_key",
    "steps_key",
    "tenant_keys",
    "tenant_prefix",
    "turn_key",
    "usage_key",
)


PREFIX = "agentd:"


def tenant_prefix(tenant: str) -> str:
    """The prefix of every key of ``tenant``'s objects (``""``: today's plain prefix).
    Tenant names are checked by the config (``TENANT_RE``): no ``{``, ``}`` or ``:``."""
    return f"{PREFIX}t:{tenant}:" if tenant else PREFIX


def session_keys(sid: str, prefix: str = PREFIX) -> tuple[str, str]:
    """The session's (meta, log) keys."""
    return f"{prefix}s:{{{sid}}}:meta", f"{prefix}s:{{{sid}}}:log"


# A session's meta key is the meta prefix + SID + SESSION_META_SUFFIX (for scripts that
# read the metas an index names).
SESSION_META_PREFIX, SESSION_META_SUFFIX = f"{PREFIX}s:{{", "}:meta"


def session_meta_prefix(prefix: str = PREFIX) -> str:
    return f"{prefix}s:{{"


def session_index(tag: str, prefix: str = PREFIX) -> str:
    """An index of sessions by last activity (see the module docstring)."""
    return f"{prefix}sx:{{{tag}}}"


# What joins an index key and an agent's name in that agent's index (the scripts that
# write it append this and the session's agent to the index key they are given).
AGENT_INDEX_JOIN = ":a:"


def session_agent_index(index: str, agent: str) -> str:
    """The index of ``agent``'s sessions beside the session index key ``index``."""
    return f"{index}{AGENT_INDEX_JOIN}{agent}"


def turn_key(sid: str, prefix: str = PREFIX) -> str:
    """The session's turn lease: held by the turn that runs now (see scripts.BEGIN_TURN)."""
    return f"{prefix}s:{{{sid}}}:turn"


def session_channel(sid: str, prefix: str = PREFIX) -> str:
    return f"{prefix}s:{{{sid}}}:ev"


def cache_key(hexkey: str) -> str:
    """A cached response (L2), tagged by its own hash so entries spread over the shards."""
    return f"{PREFIX}c:{{{hexkey}}}"


def flight_keys(hexkey: str) -> tuple[str, str]:
    """A single-flight's (lock, stream of chunks): same slot as the entry."""
    return f"{PREFIX}c:{{{hexkey}}}:lock", f"{PREFIX}c:{{{hexkey}}}:flight"


CACHE_EPOCH = f"{PREFIX}cache:epoch"
CACHE_CHANNEL = f"{PREFIX}cache:invalidate"
CACHE_PATTERN = f"{PREFIX}c:*"


# The consumer group of every queue stream (each worker of each instance is a consumer).
JOB_GROUP = "agentd"


def queue_key(partition: str, shard: int) -> str:
    """Shard ``shard`` of a partition's queue: each shard its own hash tag (slot)."""
    return f"{PREFIX}q:{{{partition}:{shard}}}"


def dead_key(partition: str) -> str:
    return f"{PREFIX}q:{{{partition}}}:dead"


def retries_key(partition: str, shard: int) -> str:
    """Failed attempts put back on a queue shard: the shard's stream's slot."""
    return f"{PREFIX}qr:{{{partition}:{shard}}}"


def registry_keys() -> tuple[str, str]:
    """The service registry's (entries hash, last-seen sorted set): one fixed slot."""
    return f"{PREFIX}reg:{{registry}}", f"{PREFIX}reg:{{registry}}:seen"


def record_keys(rid: str, prefix: str = PREFIX) -> tuple[str, str, str]:
    """A response's (record, events stream, events channel): one slot."""
    return f"{prefix}r:{{{rid}}}", f"{prefix}r:{{{rid}}}:ev", f"{prefix}r:{{{rid}}}:ch"


def steps_key(rid: str, prefix: str = PREFIX) -> str:
    """A response's recorded tool loop steps: the record's slot."""
    return f"{prefix}r:{{{rid}}}:steps"


def state_key(name: str, prefix: str = PREFIX) -> str:
    return f"{prefix}st:{{{name}}}"


def state_index(tenant: str, prefix: str = PREFIX) -> str:
    """The tenant's namespace index; a namespace's key index is this, ``:`` and its name."""
    return f"{prefix}stn:{{st/{tenant}}}"


def job_id(tenant: str, rid: str) -> str:
    """The id a response's job carries through the (global) queue: the response id,
    after its tenant and a ``/`` for a named tenant (tenant names have no ``/``)."""
    return f"{tenant}/{rid}" if tenant else rid


def job_of(job: str) -> tuple[str, str]:
    """(tenant, response id) of a queued job's id (see :func:`job_id`)."""
    tenant, _, rid = job.rpartition("/")
    return tenant, rid


LIMIT_PREFIX = f"{PREFIX}l:"


def limit_keys(tenant: str, scope: str) -> tuple[str, str, str]:
    """A limit scope's (state hash, requests log, turn slots): the tenant's slot."""
    base = f"{LIMIT_PREFIX}{{{tenant}}}:{scope}"
    return base, base + ":rl", base + ":cc"


def usage_key(tenant: str, day: str) -> str:
    """The tenant's usage of one UTC day (``YYYYMMDD``): the tenant's slot."""
    return f"{LIMIT_PREFIX}{{{tenant}}}:u:{day}"


# Every usage record, for the admin's view across tenants (SCAN).
USAGE_PATTERN = f"{LIMIT_PREFIX}{{*}}:u:*"


# -- API keys --------------------------------------------------------------------------

KEYS_ALL = f"{PREFIX}ka"
KEYS_CHANNEL = f"{PREFIX}keys:changed"


def key_record(key_id: str) -> str:
    """An API key's record, tagged by its id (records spread over the shards)."""
    return f"{PREFIX}k:{{{key_id}}}"


def tenant_keys(tenant: str) -> str:
    """The index of a tenant's key ids (``""``, the operator's tenant, hashes as a whole)."""
    return f"{PREFIX}kt:{{{tenant}}}"
