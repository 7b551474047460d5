"""The limiter's Lua scripts (keys in :func:`agentd.store.keys.limit_keys`): each is one
round trip on the tenant's slot, and every clock reading is the server's ``TIME``, so all
workers of all instances agree on the windows."""

from __future__ import annotations

from ..scripts import Script

__all__ = ("ADMIT", "RENEW_SLOTS", "SETTLE")

# The server's time in ms, as every script reads it.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: per scope (state hash, requests log, slots). ARGV: ticket, lease ms, day, month,
# scope count, then per scope: requests/min, tokens/min, turns at once, tokens/day,
# tokens/month. Checks every scope; if all allow, logs the request and takes the slot.
# Returns {refusal (0 admitted; 1 day, 2 month, 3 turns, 4 requests, 5 tokens), refusing
# scope's index, retry ms, then per scope: requests limit, remaining, reset ms, tokens
# limit, remaining, reset ms} (-1 where a limit does not apply).
ADMIT = Script(
    "admit",
    _NOW
    + """
local ticket, lease = ARGV[1], tonumber(ARGV[2])
local day, month, n = ARGV[3], ARGV[4], tonumber(ARGV[5])
local W = 60000
local out = {0, 0, 0}
for i = 1, n do
  local h, r, c = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local b = 5 + 5 * (i - 1)
  local rpm, tpm, conc = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local tpd, tpmo = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local why, wait = 0, 0
  if tpd > 0 or tpmo > 0 then
    local st = redis.call('HMGET', h, 'dd', 'dt', 'md', 'mt')
    if tpd > 0 and st[1] == day and tonumber(st[2]) >= tpd then
      why = 1
    elseif tpmo > 0 and st[3] == month and tonumber(st[4]) >= tpmo then
      why = 2
    end
  end
  if why == 0 and conc > 0 then
    redis.call('ZREMRANGEBYSCORE', c, '-inf', now)
    if redis.call('ZCARD', c) >= conc then
      why, wait = 3, 1000
    end
  end
  local rl, rr, rs = -1, -1, -1
  if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', r, '-inf', now - W)
    local used = redis.call('ZCARD', r)
    rl = rpm
    if used >= rpm then
      rr = 0
      local newest = redis.call('ZRANGE', r, -1, -1, 'WITHSCORES')
      rs = tonumber(newest[2]) + W - now
      if why == 0 then
        -- a place frees when enough of the oldest have left the window
        local frees = redis.call('ZRANGE', r, used - rpm, used - rpm, 'WITHSCORES')
        why, wait = 4, tonumber(frees[2]) + W - now
      end
    else
      rr, rs = rpm - used - 1, W
    end
  end
  local tl, tr, ts = -1, -1, -1
  if tpm > 0 then
    local st = redis.call('HMGET', h, 'tl', 'tt')
    local level = tpm
    if st[1] then
      level = math.min(tpm, tonumber(st[1]) + (now - tonumber(st[2])) * tpm / W)
    end
    if level <= 0 and why == 0 then
      why, wait = 5, math.floor(-level * W / tpm) + 1
    end
    tl, tr, ts = tpm, math.max(0, math.floor(level)), math.floor((tpm - level) * W / tpm)
  end
  if why > 0 then
    if out[1] == 0 then
      out[1], out[2] = why, i
    end
    out[3] = math.max(out[3], wait)
  end
  for _, v in ipairs({rl, rr, rs, tl, tr, ts}) do
    out[#out + 1] = v
  end
end
if out[1] == 0 then
  for i = 1, n do
    local b = 5 + 5 * (i - 1)
    if tonumber(ARGV[b + 1]) > 0 then
      redis.call('ZADD', KEYS[3 * i - 1], now, ticket)
      redis.call('PEXPIRE', KEYS[3 * i - 1], W)
    end
    if tonumber(ARGV[b + 3]) > 0 then
      redis.call('ZADD', KEYS[3 * i], now + lease, ticket)
      redis.call('PEXPIRE', KEYS[3 * i], lease)
    end
  end
end
return out
""",
)

# KEYS: each scope's slots. ARGV: ticket, lease ms. Extends the slots the ticket holds.
RENEW_SLOTS = Script(
    "renew_slots",
    _NOW
    + """
local lease = tonumber(ARGV[2])
for _, c in ipairs(KEYS) do
  if redis.call('ZADD', c, 'XX', 'CH', now + lease, ARGV[1]) > 0 then
    redis.call('PEXPIRE', c, lease)
  end
end
return 1
""",
)

# KEYS: per scope (state hash, requests log, slots), then the usage record. ARGV: ticket,
# day, month, scope count, tokens charged, prompt tokens, completion tokens, cache hit
# (0/1), key ("" for none), usage TTL s, state TTL ms, log the request (0/1: a request
# not admitted by ADMIT, a background job's), then per scope: requests/min, tokens/min.
# Releases the ticket's slots, charges the tokens, and counts the request in the day's
# usage.
SETTLE = Script(
    "settle",
    _NOW
    + """
local ticket, day, month, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
local W = 60000
for i = 1, n do
  local h, r, c = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  redis.call('ZREM', c, ticket)
  if ARGV[12] == '1' and tonumber(ARGV[11 + 2 * i]) > 0 then
    redis.call('ZADD', r, now, ticket)
    redis.call('PEXPIRE', r, W)
  end
  if tokens > 0 then
    local tpm = tonumber(ARGV[12 + 2 * i])
    if tpm > 0 then
      local st = redis.call('HMGET', h, 'tl', 'tt')
      local level = tpm
      if st[1] then
        level = math.min(tpm, tonumber(st[1]) + (now - tonumber(st[2])) * tpm / W)
      end
      redis.call('HSET', h, 'tl', tostring(level - tokens), 'tt', now)
    end
    local st = redis.call('HMGET', h, 'dd', 'md')
    if st[1] ~= day then
      redis.call('HSET', h, 'dd', day, 'dt', 0)
    end
    if st[2] ~= month then
      redis.call('HSET', h, 'md', month, 'mt', 0)
    end
    redis.call('HINCRBY', h, 'dt', tokens)
    redis.call('HINCRBY', h, 'mt', tokens)
    redis.call('PEXPIRE', h, ARGV[11])
  end
end
local u = KEYS[3 * n + 1]
local key = ARGV[9]
local names = {'requests', 'prompt_tokens', 'completion_tokens', 'cache_hits'}
local counts = {1, tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])}
for j = 1, 4 do
  redis.call('HINCRBY', u, names[j], counts[j])
  if key ~= '' then
    redis.call('HINCRBY', u, key .. '/' .. names[j], counts[j])
  end
end
redis.call('EXPIRE', u, ARGV[10])
return 1
""",
)
