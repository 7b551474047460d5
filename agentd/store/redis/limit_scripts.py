"""The limiter's Lua script (keys in :func:`agentd.store.keys.limit_keys`): one round
trip on the tenant's slot for a worker's whole batch, and every clock reading is the
server's ``TIME``, so all workers of all instances agree on the windows."""

from __future__ import annotations

from ..limits import AHEAD, BUCKET_MS, BUCKETS, WINDOW_MS
from ..scripts import Script

__all__ = ("HELPERS", "STEP")

# KEYS: per scope (state hash, requests log hash, slots sorted set), then the day's
# usage record.
# ARGV: lease ms, day, month, scope count n, state TTL ms, usage TTL s; per scope (7):
# requests/min, tokens/min, turns at once, tokens/day, tokens/month, tokens to charge,
# requests to log unchecked; then the slots to free ("INDEX TICKET INDEX TICKET ...",
# one string: a batch is a handful of arguments, not a few per request), the slots to
# renew (the same), the usage counts (count, then field and count each), and the asks
# ("TICKET I,J TICKET I ...": each ask's ticket and its rules' scope indexes).
# Writes the batch, then checks each ask in order as if alone; an ask that every rule
# allows is logged and takes its slots. Returns per ask: refusal (0 admitted; 1 day,
# 2 month, 3 turns, 4 requests, 5 tokens), the refusing rule's position in the ask,
# retry ms, then the tightest requests window (limit, remaining, reset ms) and tokens
# window (the same), -1 where no rule has one.
#
# The requests log of a scope is a hash of counts per bucket of G ms (field: the bucket's
# number, now // G), 'o' (the oldest bucket that may count) and 's' (their sum): a check
# counts the current bucket and the B before it, which hold every request of the last
# W ms, so at most N are admitted in any W ms; a lease's places are counted A buckets
# ahead (.lease_script), so the hash holds at most B + A + 1 counts.
# The clock, the window's constants and the reads a step and a lease share (a scope
# ``s`` has its keys h, r, c and its limits rpm, tpm, conc).
HELPERS = (
    f"""
local W, G, B, A = {WINDOW_MS}, {BUCKET_MS}, {BUCKETS}, {AHEAD}
"""
    + """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local cur = math.floor(now / G)
local function int(x)
  return string.format('%.0f', x)
end
-- A scope's token bucket and day and month counters, read once.
local function state(s)
  if s.dd ~= nil then
    return
  end
  local v = redis.call('HMGET', s.h, 'dd', 'dt', 'md', 'mt', 'tl', 'tt')
  s.dd, s.dt = v[1] or '', tonumber(v[2]) or 0
  s.md, s.mt = v[3] or '', tonumber(v[4]) or 0
  if s.tpm > 0 then
    s.level = s.tpm
    if v[5] then
      s.level = math.min(s.tpm, tonumber(v[5]) + (now - tonumber(v[6])) * s.tpm / W)
    end
  end
end

-- A scope's requests log, its buckets too old to count dropped, read once.
local function log(s)
  if s.total ~= nil then
    return
  end
  local v = redis.call('HMGET', s.r, 'o', 's')
  local o, total = tonumber(v[1]), tonumber(v[2]) or 0
  local keep = cur - B
  s.added = 0
  if o and o < keep then
    s.moved = true
    if keep > o + B + A then
      redis.call('DEL', s.r)
      total = 0
    else
      local gone = {}
      for j = o, keep - 1 do
        gone[#gone + 1] = int(j)
      end
      for _, x in ipairs(redis.call('HMGET', s.r, unpack(gone))) do
        total = total - (tonumber(x) or 0)
      end
      redis.call('HDEL', s.r, unpack(gone))
    end
  end
  s.total = total
end

-- When a full log has a place again, and when it is empty (only on a refusal).
local function frees(s)
  if s.wait ~= nil then
    return
  end
  local names = {}
  for j = cur - B, cur + A do
    names[#names + 1] = int(j)
  end
  local counts = redis.call('HMGET', s.r, unpack(names))
  local leaving, newest = 0, nil
  s.wait = 0
  for k, x in ipairs(counts) do
    local j = cur - B + k - 1
    local count = tonumber(x) or 0
    if j == cur then
      count = count + s.added
    end
    if count > 0 then
      newest = j
      leaving = leaving + count
      if s.wait == 0 and s.total - leaving < s.rpm then
        s.wait = (j + B + 1) * G - now
      end
    end
  end
  s.empty = newest and (newest + B + 1) * G - now or 0
end

local function slots(s)
  if s.held == nil then
    redis.call('ZREMRANGEBYSCORE', s.c, '-inf', now)
    s.held = redis.call('ZCARD', s.c)
  end
end

"""
)

STEP = Script(
    "limits_step",
    HELPERS
    + """
local lease, day, month, n = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local sc = {}
for i = 1, n do
  local b = 6 + 7 * (i - 1)
  sc[i] = {
    h = KEYS[3 * i - 2], r = KEYS[3 * i - 1], c = KEYS[3 * i],
    rpm = tonumber(ARGV[b + 1]), tpm = tonumber(ARGV[b + 2]), conc = tonumber(ARGV[b + 3]),
    tpd = tonumber(ARGV[b + 4]), tpmo = tonumber(ARGV[b + 5]),
    charge = tonumber(ARGV[b + 6]), logged = tonumber(ARGV[b + 7]),
  }
end
local p = 7 + 7 * n

-- The batch: slots freed and renewed, tokens charged, requests logged, usage counted.
for _, renew in ipairs({false, true}) do
  local by = {}
  for i, ticket in string.gmatch(ARGV[p], '(%d+) (%S+)') do
    i = tonumber(i)
    by[i] = by[i] or {}
    if renew then
      table.insert(by[i], now + lease)
    end
    table.insert(by[i], ticket)
  end
  for i, members in pairs(by) do
    for j = 1, #members, 1000 do
      local part = {unpack(members, j, math.min(j + 999, #members))}
      if not renew then
        redis.call('ZREM', sc[i].c, unpack(part))
      elseif redis.call('ZADD', sc[i].c, 'XX', 'CH', unpack(part)) > 0 then
        redis.call('PEXPIRE', sc[i].c, lease)
      end
    end
  end
  p = p + 1
end
for i = 1, n do
  local s = sc[i]
  if s.charge > 0 then
    state(s)
    if s.tpm > 0 then
      s.level = s.level - s.charge
    end
    if s.dd ~= day then
      s.dd, s.dt = day, 0
    end
    if s.md ~= month then
      s.md, s.mt = month, 0
    end
    s.dt, s.mt = s.dt + s.charge, s.mt + s.charge
    s.dirty = true
  end
  if s.logged > 0 and s.rpm > 0 then
    log(s)
    s.total, s.added = s.total + s.logged, s.added + s.logged
  end
end
local count = tonumber(ARGV[p])
if count > 0 then
  local u = KEYS[3 * n + 1]
  for j = 1, count do
    redis.call('HINCRBY', u, ARGV[p + 2 * j - 1], ARGV[p + 2 * j])
  end
  redis.call('EXPIRE', u, ARGV[6])
end
p = p + 1 + 2 * count

-- The asks, in order.
local out = {}
for ticket, list in string.gmatch(ARGV[p], '(%S+) ([%d,]+)') do
  local ask = {}
  for i in string.gmatch(list, '%d+') do
    ask[#ask + 1] = sc[tonumber(i)]
  end
  local why, by, wait = 0, 0, 0
  local rl, rr, rs, tl, tr, ts = -1, -1, -1, -1, -1, -1
  for q, s in ipairs(ask) do
    local w, wt = 0, 0
    if s.tpd > 0 or s.tpmo > 0 then
      state(s)
      if s.tpd > 0 and s.dd == day and s.dt >= s.tpd then
        w = 1
      elseif s.tpmo > 0 and s.md == month and s.mt >= s.tpmo then
        w = 2
      end
    end
    if w == 0 and s.conc > 0 then
      slots(s)
      if s.held >= s.conc then
        w, wt = 3, 1000
      end
    end
    if s.rpm > 0 then
      log(s)
      local left, reset
      if s.total >= s.rpm then
        frees(s)
        left, reset = 0, s.empty
        if w == 0 then
          w, wt = 4, s.wait
        end
      else
        left, reset = s.rpm - s.total - 1, (cur + B + 1) * G - now
      end
      if rl < 0 or left < rr then
        rl, rr, rs = s.rpm, left, reset
      end
    end
    if s.tpm > 0 then
      state(s)
      local level = s.level
      if level <= 0 and w == 0 then
        w, wt = 5, math.floor(-level * W / s.tpm) + 1
      end
      local left = math.max(0, math.floor(level))
      if tl < 0 or left < tr then
        tl, tr, ts = s.tpm, left, math.floor((s.tpm - level) * W / s.tpm)
      end
    end
    if w > 0 then
      if why == 0 then
        why, by = w, q
      end
      wait = math.max(wait, wt)
    end
  end
  if why == 0 then
    for _, s in ipairs(ask) do
      if s.rpm > 0 then
        s.total, s.added = s.total + 1, s.added + 1
      end
      if s.conc > 0 then
        s.held = s.held + 1
        s.new = s.new or {}
        table.insert(s.new, now + lease)
        table.insert(s.new, ticket)
      end
    end
  end
  for _, x in ipairs({why, by, wait, rl, rr, rs, tl, tr, ts}) do
    out[#out + 1] = x
  end
end

-- Write what changed.
for i = 1, n do
  local s = sc[i]
  if s.dirty then
    if s.tpm > 0 then
      redis.call('HSET', s.h, 'tl', string.format('%.17g', s.level), 'tt', now)
    end
    redis.call('HSET', s.h, 'dd', s.dd, 'dt', int(s.dt), 'md', s.md, 'mt', int(s.mt))
    redis.call('PEXPIRE', s.h, ARGV[5])
  end
  if s.total ~= nil and (s.added > 0 or s.moved) then
    if s.added > 0 then
      redis.call('HINCRBY', s.r, int(cur), s.added)
    end
    if s.total > 0 then
      redis.call('HSET', s.r, 'o', int(cur - B), 's', int(s.total))
      redis.call('PEXPIRE', s.r, W + (A + 2) * G)
    else
      redis.call('DEL', s.r)
    end
  end
  if s.new then
    for j = 1, #s.new, 1000 do
      redis.call('ZADD', s.c, unpack(s.new, j, math.min(j + 999, #s.new)))
    end
    redis.call('PEXPIRE', s.c, lease)
  end
end
return out
""",
)
