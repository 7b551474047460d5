"""The Lua scripts of the operators' views: the service registry's heartbeats and
listing, and what retrying or discarding a dead letter does to its stream and record.
(The scripts of agentd's own work are in :mod:`agentd.store.scripts`.)"""

from __future__ import annotations

from ..scripts import Script

__all__ = (
    "DEAD_TAKE",
    "RECORD_REQUEUE",
    "RECORD_UNQUEUE",
    "REGISTRY_BEAT",
    "REGISTRY_LEAVE",
    "REGISTRY_LIST",
)

# The server's clock, in ms: every worker's last-seen time is on the same clock, whatever
# the skew between hosts.
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# -- the service registry (KEYS: entries hash, last-seen sorted set; keys.registry_keys) --

# ARGV: worker id, entry JSON, ttl ms, keys' lifetime ms. Drops the workers not seen for
# the ttl (one that died without leaving), then notes this one. Returns the server ms.
REGISTRY_BEAT = Script(
    "registry_beat",
    _NOW_MS
    + """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - tonumber(ARGV[3])))
for i = 1, #stale, 500 do
  local part = {unpack(stale, i, math.min(i + 499, #stale))}
  redis.call('HDEL', KEYS[1], unpack(part))
  redis.call('ZREM', KEYS[2], unpack(part))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return now
""",
)

# ARGV: worker id.
REGISTRY_LEAVE = Script(
    "registry_leave",
    """
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
""",
)

# ARGV: ttl ms. Returns {server ms, then (id, last seen ms, entry JSON) per live worker}.
REGISTRY_LIST = Script(
    "registry_list",
    _NOW_MS
    + """
local rows = redis.call('ZRANGEBYSCORE', KEYS[2], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
local out = {now}
for i = 1, #rows, 2 do
  local entry = redis.call('HGET', KEYS[1], rows[i])
  if entry then
    out[#out + 1] = rows[i]
    out[#out + 1] = rows[i + 1]
    out[#out + 1] = entry
  end
end
return out
""",
)

# -- dead letters ---------------------------------------------------------------------

# KEYS: dead-letter stream. ARGV: entry id. Removes the entry and returns its fields
# (flat), or nil: of two callers, one only gets it.
DEAD_TAKE = Script(
    "dead_take",
    """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #rows == 0 then return false end
redis.call('XDEL', KEYS[1], ARGV[1])
return rows[1][2]
""",
)

# KEYS: record. A failed response goes back to queued for a new round of attempts: its
# attempt number (the fence) stays and goes on growing, ``base`` notes the attempts made
# so far (RECORD_START counts from it), its error is kept as ``lasterr`` and its result
# fields go. Returns the status it had (only ``failed`` is changed), or nil if none.
RECORD_REQUEUE = Script(
    "record_requeue",
    """
local f = redis.call('HMGET', KEYS[1], 'status', 'att', 'error')
if not f[1] then return false end
if f[1] ~= 'failed' then return f[1] end
redis.call('HSET', KEYS[1], 'status', 'queued', 'base', f[2] or '0')
if f[3] then redis.call('HSET', KEYS[1], 'lasterr', f[3]) end
redis.call('HDEL', KEYS[1], 'error', 'done', 'text', 'usage', 'inc', 'rseq', 'items', 'mat',
  'cx', 'hook')
return f[1]
""",
)

# KEYS: record. ARGV: now (unix s). Undoes RECORD_REQUEUE when the job could not be
# queued, unless an attempt began meanwhile. Returns 1 if undone.
RECORD_UNQUEUE = Script(
    "record_unqueue",
    """
local f = redis.call('HMGET', KEYS[1], 'status', 'att', 'base', 'lasterr')
if f[1] ~= 'queued' or f[2] ~= f[3] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'done', ARGV[1])
if f[4] then redis.call('HSET', KEYS[1], 'error', f[4]) end
return 1
""",
)
