"""Every Lua script agentd runs on Redis: each step of a session, a turn, a shared-state
document, a single-flight, the job queue, a response record and an API key record is one
script (one round trip, atomic on the keys' shard). The keys they get are formatted in
:mod:`.keys`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .codec import SESSION_DELETED
from .keys import AGENT_INDEX_JOIN, JOB_GROUP

__all__ = (
    "ACK_JOB",
    "APPEND",
    "BEGIN_TURN",
    "CREATE",
    "DELETE",
    "DELETE_MESSAGE",
    "EMIT",
    "END_TURN",
    "ENQUEUE",
    "GET_META",
    "HISTORY",
    "INTERRUPT_TURN",
    "KEY_CREATE",
    "KEY_DELETE",
    "KEY_UPDATE",
    "LEAD",
    "LIST_SESSIONS",
    "LOAD",
    "PUBLISH",
    "QUEUE_DEPTH",
    "RECORD_CANCEL",
    "RECORD_CREATE",
    "RECORD_DELETE",
    "RECORD_START",
    "RECORD_STEP",
    "RECORD_UPDATE",
    "RECORD_WRITE",
    "RELEASE_LOCK",
    "RENEW_JOB",
    "RENEW_LOCK",
    "RENEW_TURN",
    "RETRY_JOB",
    "STATE_INDEX",
    "STATE_NAMESPACES",
    "STATE_PAGE",
    "STATE_REMOVE",
    "STATE_WRITE",
    "UPDATE_META",
    "Script",
)


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1, for EVALSHA with an EVAL fallback on NOSCRIPT.

    ``$GROUP`` (the queue's consumer group) and ``$DELETED`` (a session's deleted event)
    in the text are filled in from their one definition.
    """

    name: str
    text: str
    # Hashed once: every EVALSHA sends it, so a turn's two calls must not hash the text.
    sha: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = self.text.replace("$GROUP", JOB_GROUP).replace("$DELETED", SESSION_DELETED.decode())
        text = text.replace("$AGENT_JOIN", AGENT_INDEX_JOIN)
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "sha", hashlib.sha1(text.encode()).hexdigest())


# A session's index entry (see keys.session_index) is written in the same script as the
# session where the index key may be (KEYS[n] given: one Redis, client-side shards); in a
# Redis Cluster it is another slot, so the store writes it behind the script instead
# (agentd/store/redis/index.py).
#
# A session of an agent is also in that agent's index (keys.session_agent_index), whose
# key the script derives from the index key and the meta's ``agent`` (the same hash tag:
# the same shard). The key is not in KEYS: one Redis and client-side shards allow that,
# and in a cluster, where the index key is not given, the scripts do not write it.
# _index_lua(key, score, sid): the Lua that writes both entries when the key is given.
def _index_lua(key: str, score: str, sid: str) -> str:
    return f"""
if {key} then
  redis.call('ZADD', {key}, {score}, {sid})
  local agent = redis.call('HGET', KEYS[1], 'agent')
  if agent and agent ~= '' then
    redis.call('ZADD', {key} .. '$AGENT_JOIN' .. agent, {score}, {sid})
  end
end
"""


# KEYS: meta, log, [index]. ARGV: ttl, activity score (ms), session id, then field/value
# pairs of the meta hash.
CREATE = Script(
    "create",
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'seq', 0, unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
"""
    + _index_lua("KEYS[3]", "ARGV[2]", "ARGV[3]")
    + """
return 1
""",
)

# KEYS: meta. ARGV: ttl, metadata JSON. Replaces the metadata; returns the meta hash
# (flat) or nil.
UPDATE_META = Script(
    "update_meta",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'metadata', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('HGETALL', KEYS[1])
""",
)

# KEYS: meta, log, channel. ARGV: ttl, seq, publish command, event. Deletes one message;
# returns 1, 0 when there is no such message, nil when there is no session.
DELETE_MESSAGE = Script(
    "delete_message",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if redis.call('XDEL', KEYS[2], string.format('%d', tonumber(ARGV[2])) .. '-0') == 0 then
  return 0
end
redis.call(ARGV[3], KEYS[3], ARGV[4])
return 1
""",
)

# KEYS: index. ARGV: max score ('+inf', or the cursor's), the cursor's session id ('':
# none), limit, meta key prefix, meta key suffix, agent ('': the index is not an agent's).
# The newest ``limit`` sessions of this shard's index after the cursor: {id, score, meta
# (flat), ...}. Entries whose session is gone (expired, or in an agent's index a session
# of another agent now under that id) are removed as they are met. The metas are read by
# key name, which one Redis and client-side shards allow (a Redis Cluster does not: see
# RedisStore).
LIST_SESSIONS = Script(
    "list_sessions",
    """
local limit = tonumber(ARGV[3])
local out, gone = {}, {}
local offset, batch = 0, limit + 16
while #out < limit * 3 do
  local rows = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'WITHSCORES',
    'LIMIT', offset, batch)
  if #rows == 0 then break end
  for i = 1, #rows, 2 do
    local sid, score = rows[i], rows[i + 1]
    if not (ARGV[2] ~= '' and tonumber(score) == tonumber(ARGV[1]) and sid >= ARGV[2]) then
      local meta = redis.call('HGETALL', ARGV[4] .. sid .. ARGV[5])
      if #meta > 0 and ARGV[6] ~= '' then
        local agent = ''
        for j = 1, #meta, 2 do
          if meta[j] == 'agent' then agent = meta[j + 1] end
        end
        if agent ~= ARGV[6] then meta = {} end
      end
      if #meta == 0 then
        gone[#gone + 1] = sid
      else
        out[#out + 1] = sid
        out[#out + 1] = score
        out[#out + 1] = meta
        if #out >= limit * 3 then break end
      end
    end
  end
  offset = offset + #rows / 2
end
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
return out
""",
)

# KEYS: meta, log. ARGV: ttl. Returns the meta hash (flat) or nil.
GET_META = Script(
    "get_meta",
    """
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then return false end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return meta
""",
)

# KEYS: meta, log, channel, turn, [index]. ARGV: publish command (PUBLISH or SPUBLISH),
# session id.
DELETE = Script(
    "delete",
    """
if KEYS[5] then
  redis.call('ZREM', KEYS[5], ARGV[2])
  local agent = redis.call('HGET', KEYS[1], 'agent')
  if agent and agent ~= '' then redis.call('ZREM', KEYS[5] .. '$AGENT_JOIN' .. agent, ARGV[2]) end
end
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2], KEYS[4])
redis.call(ARGV[1], KEYS[3], '$DELETED')
return 1
""",
)


# KEYS: meta, log, channel. ARGV: ttl, max messages, publish command, payloads...
# Returns the first new seq, or nil when the session does not exist. The event carries
# the messages with their seq, spliced into each payload (a JSON object) as text.
def _append_lua(first_payload: int, index_key: int) -> str:
    """Lua that appends ARGV[first_payload..] (ARGV[1] ttl, ARGV[2] max messages, ARGV[3]
    publish command; the two ARGV before the payloads: the activity score and the session
    id for the index at KEYS[index_key], when given), trims, refreshes the TTL, publishes
    and returns the first seq; without the index key (a cluster, which indexes behind the
    script) {first seq, the session's agent}, for the agent's index."""
    index = _index_lua(
        f"KEYS[{index_key}]", f"ARGV[{first_payload - 2}]", f"ARGV[{first_payload - 1}]"
    )
    return f"""
local n = #ARGV - {first_payload - 1}
if n == 0 then return 0 end
{index}local last = redis.call('HINCRBY', KEYS[1], 'seq', n)
local first = last - n + 1
local parts = {{}}
for i = 1, n do
  local seq = string.format('%d', first + i - 1)
  local payload = ARGV[{first_payload - 1} + i]
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], seq .. '-0', 'm', payload)
  parts[i] = '{{"seq":' .. seq .. ',' .. string.sub(payload, 2)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
local event = '{{"kind":"messages","messages":[' .. table.concat(parts, ',') .. ']}}'
redis.call(ARGV[3], KEYS[3], event)
if not KEYS[{index_key}] then return {{first, redis.call('HGET', KEYS[1], 'agent') or ''}} end
return first
"""


# KEYS: meta, log, channel, [index]. ARGV: ttl, max messages, publish command, activity
# score, session id, payloads... Returns the first new seq, or nil when the session does
# not exist. The event carries the messages with their seq, spliced into each payload (a
# JSON object) as text.
APPEND = Script(
    "append",
    "if redis.call('EXISTS', KEYS[1]) == 0 then return false end\n" + _append_lua(6, 4),
)

# KEYS: meta, log. ARGV: ttl, after ('' = the last LIMIT), limit ('' = all), before
# ('' = none: else the last LIMIT below that seq). Returns stream entries oldest first,
# or nil when the session does not exist.
HISTORY = Script(
    "history",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
-- XRANGE answers COUNT 0 with a null reply, not an empty one.
if ARGV[3] ~= '' and tonumber(ARGV[3]) == 0 then return {} end
local top = '+'
if ARGV[4] ~= '' then
  if tonumber(ARGV[4]) <= 1 then return {} end
  top = string.format('%d', tonumber(ARGV[4]) - 1) .. '-0'
end
local rows
if ARGV[2] ~= '' then
  local start = string.format('%d', tonumber(ARGV[2]) + 1) .. '-0'
  if ARGV[3] ~= '' then
    rows = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', ARGV[3])
  else
    rows = redis.call('XRANGE', KEYS[2], start, '+')
  end
  return rows
end
if ARGV[3] == '' then return redis.call('XRANGE', KEYS[2], '-', top) end
rows = redis.call('XREVRANGE', KEYS[2], top, '-', 'COUNT', ARGV[3])
local out = {}
for i = #rows, 1, -1 do out[#out + 1] = rows[i] end
return out
""",
)

# KEYS: meta, log. ARGV: ttl, last. Returns {meta (flat), entries oldest first} or nil.
LOAD = Script(
    "load",
    """
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then return false end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
local out = {}
if tonumber(ARGV[2]) > 0 then
  local rows = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
  for i = #rows, 1, -1 do out[#out + 1] = rows[i] end
end
return {meta, out}
""",
)

# KEYS: channel. ARGV: publish command, payload.
PUBLISH = Script("publish", "return redis.call(ARGV[1], KEYS[1], ARGV[2])")

# KEYS: doc. ARGV: document JSON, expected version ('' = unconditional, '0' = absent).
# Returns {1, new version} or {0, current version, current JSON or nil}.
STATE_WRITE = Script(
    "state_write",
    """
local ver = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= ver then
  return {0, ver, redis.call('HGET', KEYS[1], 'v')}
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'ver', ver + 1)
return {1, ver + 1}
""",
)

# KEYS: doc. ARGV: expected version ('' = any). Same reply shape as STATE_WRITE.
STATE_REMOVE = Script(
    "state_remove",
    """
local ver = redis.call('HGET', KEYS[1], 'ver')
if not ver then return {0, 0} end
ver = tonumber(ver)
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= ver then
  return {0, ver, redis.call('HGET', KEYS[1], 'v')}
end
redis.call('DEL', KEYS[1])
return {1, ver}
""",
)

# The shared state listing's index (keys.state_index), on the tenant's slot.
# KEYS: namespaces, the namespace's keys. ARGV: '+' (add) or '-' (remove), namespace, keys.
STATE_INDEX = Script(
    "state_index",
    """
if ARGV[1] == '+' then
  for i = 3, #ARGV do redis.call('ZADD', KEYS[2], 0, ARGV[i]) end
  redis.call('ZADD', KEYS[1], 0, ARGV[2])
  return 1
end
for i = 3, #ARGV do redis.call('ZREM', KEYS[2], ARGV[i]) end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZREM', KEYS[1], ARGV[2]) end
return 1
""",
)

# KEYS: namespaces. ARGV: after ('' = from the first), limit.
# Returns {name, count, name, count, ...}; a namespace's keys are KEYS[1] .. ':' .. name,
# on the same slot (the tenant's hash tag).
STATE_NAMESPACES = Script(
    "state_namespaces",
    """
local low = '-'
if ARGV[1] ~= '' then low = '(' .. ARGV[1] end
local names = redis.call('ZRANGEBYLEX', KEYS[1], low, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, name in ipairs(names) do
  out[#out + 1] = name
  out[#out + 1] = redis.call('ZCARD', KEYS[1] .. ':' .. name)
end
return out
""",
)

# One Redis only (the documents are on other slots than their index): a page of a
# namespace's keys with each document's version and size, in one script.
# KEYS: the namespace's keys. ARGV: low, high (ZRANGEBYLEX bounds), limit, the start of
# the namespace's document keys (a document key is it, the key, and '}').
# Returns {key, version ('' when gone), size, ...}.
STATE_PAGE = Script(
    "state_page",
    """
local keys = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, key in ipairs(keys) do
  local doc = ARGV[4] .. key .. '}'
  out[#out + 1] = key
  out[#out + 1] = redis.call('HGET', doc, 'ver') or ''
  out[#out + 1] = redis.call('HSTRLEN', doc, 'v')
end
return out
""",
)

# Turns on one session run one at a time, in every instance: a turn takes the session's
# lease with a fresh fencing token and reads what it needs in the same step, and its
# messages are appended only while it still holds that token, in the same step that
# releases the lease. So a session's history alternates cleanly, and a turn whose lease
# expired (a stalled worker) cannot append over a newer one.

# KEYS: meta, log, turn. ARGV: ttl, last, lease ms.
# Returns {token, meta (flat), entries oldest first}; token 0 = busy; nil = no session.
BEGIN_TURN = Script(
    "begin_turn",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local token = 0
if redis.call('EXISTS', KEYS[3]) == 0 then
  token = redis.call('HINCRBY', KEYS[1], 'fence', 1)
  redis.call('HSET', KEYS[3], 'token', token)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
local meta = redis.call('HGETALL', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
local out = {}
if token ~= 0 and tonumber(ARGV[2]) > 0 then
  local rows = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
  for i = #rows, 1, -1 do out[#out + 1] = rows[i] end
end
return {token, meta, out}
""",
)

# KEYS: turn, meta. ARGV: token, lease ms. Returns 1 held, 2 held but interrupt asked, 0
# lost. A lease that ran out while no other turn took the session (the meta's fence still
# at this token) is taken again: a holder that stalled past its lease loses the session
# only to a turn that wanted it.
RENEW_TURN = Script(
    "renew_turn",
    """
local held = redis.call('HGET', KEYS[1], 'token')
if held ~= ARGV[1] then
  if held or redis.call('HGET', KEYS[2], 'fence') ~= ARGV[1] then return 0 end
  redis.call('HSET', KEYS[1], 'token', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('HEXISTS', KEYS[1], 'interrupt') == 1 then return 2 end
return 1
""",
)

# KEYS: turn. Returns 1 if a turn was running (and is now asked to stop), else 0.
INTERRUPT_TURN = Script(
    "interrupt_turn",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'interrupt', 1)
return 1
""",
)

# KEYS: meta, log, channel, turn, [index]. ARGV: ttl, max messages, publish command,
# token, activity score, session id, payloads... (none: just release). Appends only
# while the token holds the lease, then releases it. Returns the first new seq (0 when
# there was nothing to append), -1 when the lease was lost, nil when the session does
# not exist. The fence moves past the token, so a renewal of it arriving late (a keeper
# cancelled mid-call) cannot take the released session again.
END_TURN = Script(
    "end_turn",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[4], 'token') ~= ARGV[4] then return -1 end
redis.call('DEL', KEYS[4])
redis.call('HINCRBY', KEYS[1], 'fence', 1)
"""
    + _append_lua(7, 5),
)

# KEYS: lock, and optionally what lives with it (a flight's stream). ARGV: owner, ttl ms.
# Renews only the owner's lock (and the rest with it): 1, else 0.
RENEW_LOCK = Script(
    "renew_lock",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[2]) end
return 1
""",
)

# KEYS: lock. ARGV: owner. Deletes only the owner's lock.
RELEASE_LOCK = Script(
    "release_lock",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
""",
)

# KEYS: flight stream. ARGV: ttl ms, then field/value pairs. Appends and keeps it short-lived.
EMIT = Script(
    "emit",
    """
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return id
""",
)

# KEYS: lock, flight stream. ARGV: owner, ttl ms. Takes the single-flight lock unless
# held, and then empties the stream a previous flight of the same key may have left.
LEAD = Script(
    "lead",
    """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('DEL', KEYS[2])
return 1
""",
)


# -- the job queue ----------------------------------------------------------------------
# The group is created from id 0 with the stream, so no job queued before a consumer
# first read is skipped.

# KEYS: stream. ARGV: limit, job id. Returns the entry id, or nil when full.
ENQUEUE = Script(
    "enqueue",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], '$GROUP', '0', 'MKSTREAM')
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', 'id', ARGV[2])
""",
)

# KEYS: stream. ARGV: consumer, entry. Resets the entry's idle time only while this
# consumer holds it (a plain XCLAIM would take it back from whoever reclaimed it).
RENEW_JOB = Script(
    "renew_job",
    """
local p = redis.call('XPENDING', KEYS[1], '$GROUP', ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[1] then return 0 end
redis.call('XCLAIM', KEYS[1], '$GROUP', ARGV[1], 0, ARGV[2], 'JUSTID')
return 1
""",
)

# KEYS: stream. ARGV: entry.
ACK_JOB = Script(
    "ack_job",
    """
redis.call('XACK', KEYS[1], '$GROUP', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
""",
)

# KEYS: stream[, retries counter]. ARGV: entry, job id. A new delivery at the end, in the
# same step as the ack of this one (only if this one was still pending: never two live
# entries); with the counter (a failed attempt's retry), counted there.
RETRY_JOB = Script(
    "retry_job",
    """
if redis.call('XACK', KEYS[1], '$GROUP', ARGV[1]) == 0 then return false end
redis.call('XDEL', KEYS[1], ARGV[1])
if KEYS[2] then redis.call('INCR', KEYS[2]) end
return redis.call('XADD', KEYS[1], '*', 'id', ARGV[2])
""",
)

# KEYS: stream, retries counter. Returns {length, pending, id of the oldest undelivered
# entry or '', retries}.
QUEUE_DEPTH = Script(
    "queue_depth",
    """
local retries = tonumber(redis.call('GET', KEYS[2]) or '0')
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, '', retries} end
local len = redis.call('XLEN', KEYS[1])
local summary = redis.call('XPENDING', KEYS[1], '$GROUP')
local first = ''
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == '$GROUP' then
      local rows = redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+', 'COUNT', 1)
      if #rows > 0 then first = rows[1][1] end
    end
  end
end
return {len, summary[1], first, retries}
""",
)

# -- response records -------------------------------------------------------------------
TERMINAL_LUA = """
local terminal = {completed = true, failed = true, cancelled = true, incomplete = true}
"""

# Appends the (seq, event) pairs of ARGV from index `first` to the events stream (ids
# 0-(seq+1)), publishes each, notes the next seq and gives the stream a TTL: ARGV[3]
# seconds, or the record's if that is shorter. ARGV[2] is the publish command.
_RECORD_EVENTS_LUA = """
local next = nil
for i = first, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  redis.call('XADD', KEYS[2], '0-' .. string.format('%d', seq + 1), 'e', ARGV[i + 1])
  redis.call(ARGV[2], KEYS[3], ARGV[i + 1])
  next = seq + 1
end
if next then
  redis.call('HSET', KEYS[1], 'seq', next)
  local ttl = redis.call('TTL', KEYS[1])
  if ttl > 0 then redis.call('EXPIRE', KEYS[2], math.min(ttl, tonumber(ARGV[3]))) end
end
"""

# KEYS: record, events, channel. ARGV: ttl s, publish command, events ttl s, field count
# N, N field/value pairs, then the first (seq, event) pairs.
RECORD_CREATE = Script(
    "record_create",
    """
redis.call('DEL', KEYS[1], KEYS[2])
local n = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'seq', 0, 'att', 0, unpack(ARGV, 5, 4 + 2 * n))
redis.call('EXPIRE', KEYS[1], ARGV[1])
local first = 5 + 2 * n
"""
    + _RECORD_EVENTS_LUA
    + "return 1\n",
)

# KEYS: record, events, channel. ARGV: max attempts, now, consumer.
# Returns {verdict, attempt, seq, the record (flat)} (see store.api.Start), or
# {'done', status}.
RECORD_START = Script(
    "record_start",
    TERMINAL_LUA
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'att', 'seq', 'cx', 'base')
if not f[1] then return {'gone'} end
if terminal[f[1]] then return {'done', f[1]} end
local att = tonumber(f[2])
if f[4] then return {'cancel', att, f[3], redis.call('HGETALL', KEYS[1])} end
-- base: the attempts made before a retried dead letter queued it again.
if att + 1 - tonumber(f[5] or '0') > tonumber(ARGV[1]) then
  return {'exhausted', att, f[3], redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'status', 'in_progress', 'att', att + 1, 'started', ARGV[2],
  'by', ARGV[3])
return {'run', att + 1, f[3], redis.call('HGETALL', KEYS[1])}
""",
)

# KEYS: record, events, channel. ARGV: attempt, field/value pairs. Fenced by attempt.
RECORD_UPDATE = Script(
    "record_update",
    """
if redis.call('HGET', KEYS[1], 'att') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
""",
)

# KEYS: record, events, channel[, steps]. ARGV: attempt, publish command, events ttl s,
# closing (1: refuse if the record already ended), field count N, N field/value pairs,
# then (seq, event) pairs. Fenced by attempt; the events get stream ids 0-(seq+1) and go
# out on the channel; closing drops the recorded steps (no attempt will resume).
RECORD_WRITE = Script(
    "record_write",
    TERMINAL_LUA
    + """
local f = redis.call('HMGET', KEYS[1], 'att', 'status')
if f[1] ~= ARGV[1] then return 0 end
if ARGV[4] == '1' and terminal[f[2]] then return 0 end
if ARGV[4] == '1' and KEYS[4] then redis.call('DEL', KEYS[4]) end
local n = tonumber(ARGV[5])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + 2 * n)) end
local first = 6 + 2 * n
"""
    + _RECORD_EVENTS_LUA
    + "return 1\n",
)

# KEYS: record, steps. ARGV: attempt, the step's index (from 0), the step's JSON. Fenced
# by attempt: 0 when fenced out, else 1. The step is appended only as the next one (a
# write sent again is not appended twice; one after a lost step neither, so the steps
# stay a prefix of the turn's); the list expires with the record.
RECORD_STEP = Script(
    "record_step",
    """
if redis.call('HGET', KEYS[1], 'att') ~= ARGV[1] then return 0 end
if redis.call('LLEN', KEYS[2]) == tonumber(ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  local ttl = redis.call('TTL', KEYS[1])
  if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
end
return 1
""",
)

# KEYS: record, events, channel. Marks cancel asked unless ended; returns the status.
RECORD_CANCEL = Script(
    "record_cancel",
    TERMINAL_LUA
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if not terminal[status] then redis.call('HSET', KEYS[1], 'cx', 1) end
return status
""",
)

# KEYS: record, events, channel[, steps]. ARGV: publish command, the deleted marker.
RECORD_DELETE = Script(
    "record_delete",
    """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
if KEYS[4] then redis.call('DEL', KEYS[4]) end
redis.call(ARGV[1], KEYS[3], ARGV[2])
return 1
""",
)

# -- API key records (KEYS: the record; see keys.key_record) ----------------------------

# ARGV: the record's fields, flat. Returns 1, or 0 (nothing written) if the id is taken.
KEY_CREATE = Script(
    "key_create",
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
""",
)

# ARGV: the changed fields, flat. Returns the whole new record, or nil if there is none.
KEY_UPDATE = Script(
    "key_update",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return redis.call('HGETALL', KEYS[1])
""",
)

# Returns the removed record, or nil if there was none.
KEY_DELETE = Script(
    "key_delete",
    """
local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then return false end
redis.call('DEL', KEYS[1])
return record
""",
)
