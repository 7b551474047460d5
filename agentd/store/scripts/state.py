"""The scripts of shared state documents: versioned writes and removals, and the
listing's index of namespaces and keys."""

from __future__ import annotations

from .script import Script

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
