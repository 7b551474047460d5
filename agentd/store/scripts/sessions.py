"""The scripts of a session: creating, reading, listing and deleting it, appending to
its history, and the turns that take its lease, read it and append their messages."""

from __future__ import annotations

from .script import Script


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
