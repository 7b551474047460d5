"""The limiter's lease script (:meth:`agentd.store.limits.Limits.lease`): a worker's
reservations on a tenant's scopes in one round trip, on the same keys, clock and log as
the step (:mod:`.limit_scripts`), so a step counts every place and slot a lease holds."""

from __future__ import annotations

from ..scripts import Script
from .limit_scripts import HELPERS

__all__ = ("LEASE",)

# KEYS: per scope (state hash, requests log hash, slots sorted set).
# ARGV: slot lease ms, day, month, scope count n, the block's member prefix; per scope
# (10): requests/min, tokens/min, turns at once, tokens/day, tokens/month, places wanted,
# places given back ("BUCKET COUNT BUCKET COUNT ..."), block size wanted, block size held,
# whether to renew the block ("1"), or to build it anew ("2": the worker does not know
# which of its members exist).
# Per scope: gives the places back to their buckets (those still in the log), reserves
# up to the places wanted that the requests log has room for, logged A buckets ahead
# (a lease is used for at most A * G ms after it was asked, so every window that may
# hold one of its requests counts it), and resizes the block of turn slots (members
# PREFIX0 … PREFIX<held - 1>): shrunk at once, grown by as many as the slots have room
# for; new members, and every member when renewed, are held for the lease. Returns per scope:
# places reserved, their bucket, the log's count after them (-1 without a
# requests limit), ms until the log is empty, the block's size, the token bucket's level
# (-1 without a tokens limit), today's and this month's tokens.
LEASE = Script(
    "limits_lease",
    HELPERS
    + """
local lease, day, month, n, block = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local out = {}
for i = 1, n do
  local b = 5 + 10 * (i - 1)
  local s = {
    h = KEYS[3 * i - 2], r = KEYS[3 * i - 1], c = KEYS[3 * i],
    rpm = tonumber(ARGV[b + 1]), tpm = tonumber(ARGV[b + 2]), conc = tonumber(ARGV[b + 3]),
    tpd = tonumber(ARGV[b + 4]), tpmo = tonumber(ARGV[b + 5]),
  }
  local want, back = tonumber(ARGV[b + 6]), ARGV[b + 7]
  local size, held, renew = tonumber(ARGV[b + 8]), tonumber(ARGV[b + 9]), ARGV[b + 10]

  local o = tonumber(redis.call('HGET', s.r, 'o'))
  for bucket, count in string.gmatch(back, '(%d+) (%d+)') do
    local there = 0
    if o and tonumber(bucket) >= o then
      there = tonumber(redis.call('HGET', s.r, bucket)) or 0
    end
    local d = math.min(tonumber(count), there)
    if d > 0 then
      if d == there then
        redis.call('HDEL', s.r, bucket)
      else
        redis.call('HINCRBY', s.r, bucket, -d)
      end
      redis.call('HINCRBY', s.r, 's', -d)
    end
  end

  local granted, total, reset = 0, -1, 0
  if s.rpm > 0 then
    log(s)
    granted = math.max(0, math.min(want, s.rpm - s.total))
    s.total = s.total + granted
    total = s.total
    if s.total > 0 then
      if granted > 0 then
        redis.call('HINCRBY', s.r, int(cur + A), granted)
      end
      redis.call('HSET', s.r, 'o', int(cur - B), 's', int(s.total))
      redis.call('PEXPIRE', s.r, W + (A + 2) * G)
      reset = (cur + A + B + 1) * G - now
    else
      redis.call('DEL', s.r)
    end
  end

  local got = held
  if s.conc == 0 then
    size = 0
  end
  if renew == '2' then
    -- The last call's answer was lost: its members are unknown, so none is counted.
    local mine = {}
    for j = 0, held - 1 do
      mine[#mine + 1] = block .. j
    end
    for j = 1, #mine, 1000 do
      redis.call('ZREM', s.c, unpack(mine, j, math.min(j + 999, #mine)))
    end
    held, got = 0, 0
  end
  if size < held then
    local gone = {}
    for j = size, held - 1 do
      gone[#gone + 1] = block .. j
    end
    for j = 1, #gone, 1000 do
      redis.call('ZREM', s.c, unpack(gone, j, math.min(j + 999, #gone)))
    end
    got = size
  elseif size > held then
    redis.call('ZREMRANGEBYSCORE', s.c, '-inf', now)
    got = held + math.max(0, math.min(size - held, s.conc - redis.call('ZCARD', s.c)))
  end
  if got > 0 and (renew ~= '0' or got > held) then
    local first = held
    if renew == '1' then
      first = 0
    end
    local add = {}
    for j = first, got - 1 do
      add[#add + 1] = now + lease
      add[#add + 1] = block .. j
    end
    for j = 1, #add, 1000 do
      redis.call('ZADD', s.c, unpack(add, j, math.min(j + 999, #add)))
    end
    redis.call('PEXPIRE', s.c, lease)
  end

  local level, dt, mt = -1, 0, 0
  if s.tpm > 0 or s.tpd > 0 or s.tpmo > 0 then
    state(s)
    if s.tpm > 0 then
      level = math.floor(s.level)
    end
    if s.dd == day then
      dt = s.dt
    end
    if s.md == month then
      mt = s.mt
    end
  end
  for _, x in ipairs({granted, cur + A, total, reset, got, level, dt, mt}) do
    out[#out + 1] = x
  end
end
return out
""",
)
