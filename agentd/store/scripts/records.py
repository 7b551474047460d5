"""The scripts of response records (background responses): creating, starting,
updating and finishing one, its events appended, published and kept for resuming."""

from __future__ import annotations

from .script import Script

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
