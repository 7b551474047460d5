"""The scripts of the job queue: enqueueing within a limit, renewing, acknowledging
and retrying a job, and the queue's depth."""

from __future__ import annotations

from .script import Script

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
