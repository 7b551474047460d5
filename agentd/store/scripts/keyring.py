"""The scripts of API key records (KEYS: the record; see ``keys.key_record``)."""

from __future__ import annotations

from .script import Script

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
